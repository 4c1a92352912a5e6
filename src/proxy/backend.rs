//! Connections to cluster nodes.
//!
//! A [`Node`] is one cluster node (by address) with a few connections, each owned by one
//! task. A connection task takes [`Job`]s from its queue in batches, writes them with one
//! syscall, and matches replies to jobs through an in-flight FIFO. Replies are passed on as
//! the bytes that came; only an error reply's text is looked at, to absorb redirects:
//! `MOVED` and `ASK` are forwarded to the named node at once (in reply order, so a
//! client's requests keep their order), and `TRYAGAIN`, `CLUSTERDOWN`, `LOADING` or a lost
//! connection send the job to the hold queue to be retried.
//!
//! A client's jobs for one node always go to the same connection (chosen by the client's
//! pin), which is what keeps its pipeline in order across nodes and redirects.
//!
//! RESP3 clients' jobs go to connections that said `HELLO 3` themselves, so the node
//! answers in the protocol the client speaks and replies still pass through untouched.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use prometheus::Histogram;

use super::hold::Reason;
use super::lease::Lease;
use super::Proxy;
use crate::config::{Config, ReadFrom};
use crate::metrics::Metrics;
use crate::protocol::ReplyScanner;
use crate::tls::{write, BackendTls, Stream};

/// Most jobs taken off a connection's queue for one write.
const BATCH: usize = 512;
/// How often a connection with requests in flight checks that its node still answers.
const STALL_CHECK: Duration = Duration::from_millis(250);
/// A request unanswered this long, on a node the cluster has failed, is sent elsewhere.
const STALL: Duration = Duration::from_secs(1);

/// A request on its way to a node, with where its reply goes.
#[derive(Debug)]
pub struct Job {
    /// The request as it goes on the wire. Only the bytes travel: a job is moved several
    /// times on its way, so it is kept small.
    pub raw: Bytes,
    /// The slot the request is for; `None` for keyless requests (any master serves them).
    pub slot: Option<u16>,
    /// Chooses the connection, so one client's jobs to a node share one.
    pub pin: u32,
    /// The client speaks RESP3: use a RESP3 connection.
    pub resp3: bool,
    /// Redirects followed so far.
    pub hops: u8,
    /// A read that may go to a replica (`backend.read_from`).
    pub read_from: ReadFrom,
    /// When the job first had to wait (for the hold deadline).
    pub held_since: Option<Instant>,
    /// What few jobs carry: boxed, so that the common job stays small to move.
    pub extra: Option<Box<Extra>>,
    pub reply: oneshot::Sender<Bytes>,
}

/// The parts of a job that only some requests have.
#[derive(Debug, Default)]
pub struct Extra {
    /// Sent first, on the same connection, as one unit with the request; its replies are
    /// not the client's (`ASKING` after an ASK, `SCRIPT LOAD` after a NOSCRIPT, or both).
    pub prefix: Option<Bytes>,
    /// How many replies the prefix gets.
    pub prefix_replies: u8,
    /// A transaction's `MULTI` and queued commands, sent after the prefix and before the
    /// request (`EXEC`); unlike the prefix it travels with the job through redirects.
    pub lead: Option<Bytes>,
    /// How many replies the lead gets.
    pub lead_replies: u32,
    /// Runs on the client's own connection instead of a shared one.
    pub lease: Option<Arc<Lease>>,
    /// WATCH, or an EXEC under a WATCH: must run on the connection holding the watch.
    pub watch: bool,
}

impl Job {
    pub fn new(
        raw: Bytes,
        slot: Option<u16>,
        pin: u32,
        resp3: bool,
    ) -> (Job, oneshot::Receiver<Bytes>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            raw,
            slot,
            pin,
            resp3,
            hops: 0,
            read_from: ReadFrom::Master,
            held_since: None,
            extra: None,
            reply,
        };
        (job, rx)
    }

    /// The job's rare parts, made on first use.
    pub fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn prefix(&self) -> Option<&Bytes> {
        self.extra.as_ref()?.prefix.as_ref()
    }

    pub fn lead(&self) -> Option<&Bytes> {
        self.extra.as_ref()?.lead.as_ref()
    }

    pub fn lease(&self) -> Option<&Arc<Lease>> {
        self.extra.as_ref()?.lease.as_ref()
    }

    /// WATCH, or an EXEC under a WATCH.
    pub fn watch(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.watch)
    }

    /// Replies to skip before the request's own: the prefix's and the lead's.
    fn skipped_replies(&self) -> u32 {
        self.extra
            .as_ref()
            .map_or(0, |e| e.prefix_replies as u32 + e.lead_replies)
    }
}

/// What an error reply asks the proxy to do instead of passing it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, addr: String },
    Ask { slot: u16, addr: String },
    Hold(Reason),
}

/// Reads an error reply; `None` when it should go to the client as it is.
pub fn classify(frame: &[u8], from: &str) -> Option<Redirect> {
    let text = frame.strip_prefix(b"-")?;
    let text = text.strip_suffix(b"\r\n").unwrap_or(text);
    let text = std::str::from_utf8(text).ok()?;
    let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
    let target = |rest: &str| -> Option<(u16, String)> {
        let (slot, addr) = rest.split_once(' ')?;
        let slot = slot.parse().ok().filter(|&s: &u16| s < 16384)?;
        // An empty host (":7001") means the host this connection already talks to.
        let addr = match addr.strip_prefix(':') {
            Some(port) => format!("{}:{port}", from.rsplit_once(':').map_or(from, |(h, _)| h)),
            None => addr.to_string(),
        };
        Some((slot, addr))
    };
    Some(match code {
        "MOVED" => {
            let (slot, addr) = target(rest)?;
            Redirect::Moved { slot, addr }
        }
        "ASK" => {
            let (slot, addr) = target(rest)?;
            Redirect::Ask { slot, addr }
        }
        "TRYAGAIN" => Redirect::Hold(Reason::TryAgain),
        "CLUSTERDOWN" => Redirect::Hold(Reason::ClusterDown(text.to_string())),
        "LOADING" | "MASTERDOWN" | "READONLY" => {
            Redirect::Hold(Reason::NotReady(format!("{from}: {text}")))
        }
        _ => return None,
    })
}

/// One cluster node and its connections.
pub struct Node {
    pub addr: String,
    /// RESP2 connections.
    conns: Vec<mpsc::UnboundedSender<Job>>,
    /// RESP3 connections, for clients that said `HELLO 3`.
    conns3: Vec<mpsc::UnboundedSender<Job>>,
    /// What a new connection task needs.
    target: Target,
    proxy: Weak<Proxy>,
    /// Dedicated connections still free (see [`Lease`]).
    dedicated: Arc<Semaphore>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).finish()
    }
}

impl Node {
    /// Starts the connection tasks (they connect when the first job arrives).
    pub fn spawn(
        addr: String,
        config: &Config,
        proxy: Weak<Proxy>,
        metrics: &Arc<Metrics>,
    ) -> Node {
        let target = Target {
            addr: addr.clone(),
            resp3: false,
            auth: config.backend_auth.as_ref().map(|a| a.request()),
            readonly: config.read_from != ReadFrom::Master,
            tls: config.backend_tls.clone(),
            connect_timeout: config.connect_timeout,
            dedicated_idle: config.dedicated_idle,
            metrics: metrics.clone(),
            latency: metrics.node_latency(&addr),
        };
        let spawn = |resp3: bool| -> Vec<_> {
            (0..config.backend_connections)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let target = Target {
                        resp3,
                        ..target.clone()
                    };
                    tokio::spawn(run(target, rx, proxy.clone(), None));
                    tx
                })
                .collect()
        };
        let (conns, conns3) = (spawn(false), spawn(true));
        Node {
            addr,
            conns,
            conns3,
            target,
            proxy,
            dedicated: Arc::new(Semaphore::new(config.dedicated_connections)),
        }
    }

    /// Queues a job on the connection its pin selects, or on its client's own connection.
    /// Gives the job back if that connection's task is gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        if let Some(lease) = job.lease().cloned() {
            return lease.send(self, job);
        }
        let conns = if job.resp3 { &self.conns3 } else { &self.conns };
        let conn = &conns[job.pin as usize % conns.len()];
        conn.send(job).map_err(|e| e.0)
    }

    /// One of the node's dedicated connections, for a connection managed elsewhere
    /// (subscriptions); `None` when all are taken.
    pub fn dedicated_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.dedicated.clone().try_acquire_owned().ok()
    }

    /// Opens a connection for `lease` alone; `None` when the node's allowance is used up.
    pub fn open_dedicated(
        &self,
        lease: &Arc<Lease>,
        resp3: bool,
    ) -> Option<mpsc::UnboundedSender<Job>> {
        let permit = self.dedicated_permit()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let target = Target {
            resp3,
            ..self.target.clone()
        };
        let owner = Owner {
            lease: Arc::downgrade(lease),
            _permit: permit,
        };
        tokio::spawn(run(target, rx, self.proxy.clone(), Some(owner)));
        Some(tx)
    }
}

/// What a connection to a node sends before any request, and how many replies that earns
/// (none of them a client's): `AUTH` when the cluster needs it (`auth`, the request),
/// `READONLY` when reads may go to replicas (harmless on a master), `HELLO 3` for a RESP3
/// connection. Every kind of node connection starts with it.
pub fn greeting(auth: Option<&[u8]>, readonly: bool, resp3: bool) -> (BytesMut, usize) {
    let mut out = BytesMut::new();
    let mut replies = 0;
    for request in [auth, readonly.then_some(READONLY), resp3.then_some(HELLO3)]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(request);
        replies += 1;
    }
    (out, replies)
}

/// Connects to a node for a connection managed outside this module (a subscription, a
/// tracking connection) and sends the greeting, then `then`. Gives the stream and how many
/// replies belong to the greeting.
pub async fn dial(
    addr: &str,
    config: &Config,
    resp3: bool,
    then: &[u8],
) -> Result<(Stream, usize), String> {
    let mut stream = crate::tls::connect(addr, config.connect_timeout, config.backend_tls.as_ref())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let auth = config.backend_auth.as_ref().map(|a| a.request());
    let (mut hello, replies) = greeting(auth.as_deref(), false, resp3);
    hello.extend_from_slice(then);
    write(&mut stream, &hello)
        .await
        .map_err(|e| format!("write: {e}"))?;
    Ok((stream, replies))
}

/// The client a dedicated connection belongs to.
struct Owner {
    lease: Weak<Lease>,
    /// Returned to the node's allowance when the connection task ends.
    _permit: OwnedSemaphorePermit,
}

/// What a connection task connects to.
#[derive(Clone)]
struct Target {
    addr: String,
    resp3: bool,
    /// The cluster's `AUTH` request, when it needs one.
    auth: Option<Bytes>,
    /// Reads may go to replicas: connections say `READONLY`.
    readonly: bool,
    /// TLS towards the node.
    tls: Option<BackendTls>,
    connect_timeout: Duration,
    /// A dedicated connection idle this long is given back.
    dedicated_idle: Duration,
    metrics: Arc<Metrics>,
    /// This node's child of the backend latency histogram.
    latency: Histogram,
}

/// A job written to the connection and waiting for its reply.
struct InFlight {
    job: Job,
    /// When its batch was written.
    sent: Instant,
    /// Replies to the job's prefix and lead still to come.
    skip: u32,
    /// A queued command of the transaction was redirected: the node discards the
    /// transaction (EXECABORT), and the proxy follows the redirect with all of it.
    redirect: Option<Box<Redirect>>,
}

async fn run(
    target: Target,
    mut rx: mpsc::UnboundedReceiver<Job>,
    proxy: Weak<Proxy>,
    owner: Option<Owner>,
) {
    let Target {
        addr,
        resp3,
        auth,
        readonly,
        tls,
        connect_timeout: limit,
        dedicated_idle: idle,
        metrics,
        latency,
    } = target;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return; // the node was dropped
        }
        let stream = match crate::tls::connect(&addr, limit, tls.as_ref()).await {
            Ok(stream) => {
                metrics.backend_connects_ok.inc();
                stream
            }
            Err(e) => {
                metrics.backend_connects_failed.inc();
                debug!(%addr, error = %e, "connect failed");
                fail_all(&proxy, &addr, batch.drain(..), &format!("connect: {e}"));
                continue;
            }
        };
        let mut conn = Connection {
            addr: &addr,
            proxy: &proxy,
            inflight: VecDeque::new(),
            wbuf: BytesMut::with_capacity(16 * 1024),
            rbuf: BytesMut::with_capacity(16 * 1024),
            scanner: ReplyScanner::default(),
            resp3,
            own: owner.as_ref(),
            idle,
            skip: 0,
            metrics: &metrics,
            latency: &latency,
        };
        // It goes out with the first batch.
        let (hello, replies) = greeting(auth.as_deref(), readonly, resp3);
        conn.wbuf.extend_from_slice(&hello);
        conn.skip = replies;
        let gauge = if owner.is_some() {
            &metrics.backend_dedicated_connections
        } else {
            &metrics.backend_connections
        };
        gauge.inc();
        let error = conn.serve(stream, &mut rx, &mut batch).await;
        gauge.dec();
        let Connection { inflight, .. } = conn;
        metrics.backend_inflight.sub(inflight.len() as i64);
        let Some(error) = error else { return };
        if let Some(lease) = owner.as_ref().and_then(|o| o.lease.upgrade()) {
            lease.lost(&addr);
        }
        warn!(%addr, %error, in_flight = inflight.len(), "backend connection lost");
        // A request written to a connection that broke may or may not have run; it is
        // retried, as cluster clients do (at-least-once for what was in flight).
        let lost = inflight.into_iter().map(|f| f.job).chain(batch.drain(..));
        fail_all(&proxy, &addr, lost, &error);
        if owner.is_some() {
            // A client's own connection is not made again behind its back: what a WATCH
            // or a blocking command needed of it is gone. Jobs still queued go round again
            // and find the connection closed (an EXEC then answers nil).
            rx.close();
            let queued = std::iter::from_fn(|| rx.try_recv().ok());
            fail_all(&proxy, &addr, queued, &error);
            return;
        }
    }
}

/// Ready when the client of the first job in flight has gone away.
fn client_gone(inflight: &mut VecDeque<InFlight>, cx: &mut Context<'_>) -> Poll<()> {
    match inflight.front_mut() {
        Some(front) => front.job.reply.poll_closed(cx),
        None => Poll::Pending,
    }
}

fn fail_all(proxy: &Weak<Proxy>, addr: &str, jobs: impl Iterator<Item = Job>, error: &str) {
    let Some(proxy) = proxy.upgrade() else { return };
    proxy.hint(super::Hint::Refresh);
    for job in jobs {
        proxy
            .hold
            .push(job, Reason::Unreachable(format!("{addr}: {error}")));
    }
}

struct Connection<'a> {
    addr: &'a str,
    proxy: &'a Weak<Proxy>,
    inflight: VecDeque<InFlight>,
    wbuf: BytesMut,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    /// The connection speaks RESP3; push messages are not replies.
    resp3: bool,
    /// The connection is one client's own: it closes when that client goes, or when it
    /// was idle for `backend.dedicated_idle` and holds no WATCH.
    own: Option<&'a Owner>,
    /// How long a dedicated connection may stay idle.
    idle: Duration,
    /// Replies still to come that answer no job (`AUTH`, `READONLY`, `HELLO 3`, sent on
    /// connect).
    skip: usize,
    metrics: &'a Metrics,
    latency: &'a Histogram,
}

const HELLO3: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
const READONLY: &[u8] = b"*1\r\n$8\r\nREADONLY\r\n";
/// `ASKING`, sent before a request that was answered with ASK.
pub const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
/// How a `SCRIPT LOAD` request begins.
const SCRIPT_LOAD: &[u8] = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n";

impl Connection<'_> {
    /// Runs the connection until it fails (`Some(reason)`), or until its job queue is closed
    /// and every reply is in, or (a dedicated connection) its client is gone (`None`).
    async fn serve(
        &mut self,
        mut stream: Stream,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        batch: &mut Vec<Job>,
    ) -> Option<String> {
        // A stopped node (SIGSTOP, a hung machine) keeps the connection open and never
        // answers: once the cluster has failed it over, what it holds is sent again.
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closed = false;
        let idle = self.idle;
        loop {
            if !batch.is_empty() {
                // Let the other sessions that are ready run first: what they send joins
                // this write instead of needing one of its own.
                tokio::task::yield_now().await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let sent = Instant::now();
                self.metrics.backend_inflight.add(batch.len() as i64);
                for job in batch.drain(..) {
                    if let Some(extra) = &job.extra {
                        if let Some(prefix) = &extra.prefix {
                            self.wbuf.extend_from_slice(prefix);
                        }
                        if let Some(lead) = &extra.lead {
                            self.wbuf.extend_from_slice(lead);
                        }
                    }
                    self.wbuf.extend_from_slice(&job.raw);
                    self.inflight.push_back(InFlight {
                        skip: job.skipped_replies(),
                        redirect: None,
                        sent,
                        job,
                    });
                }
                if let Err(e) = write(&mut stream, &self.wbuf).await {
                    return Some(format!("write: {e}"));
                }
                self.wbuf.clear();
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) => return Some("connection closed by the node".into()),
                    Ok(_) => {
                        if let Err(e) = self.replies() {
                            return Some(e);
                        }
                        if closed && self.inflight.is_empty() {
                            return None;
                        }
                        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                            self.rbuf.reserve(16 * 1024);
                        }
                    }
                    Err(e) => return Some(format!("read: {e}")),
                },
                n = rx.recv_many(batch, BATCH), if !closed => if n == 0 {
                    if self.inflight.is_empty() {
                        return None;
                    }
                    closed = true; // finish what is in flight first
                },
                _ = poll_fn(|cx| client_gone(&mut self.inflight, cx)), if self.own.is_some() => {
                    // Closing the connection also ends a blocked command on the node.
                    return None;
                }
                _ = tokio::time::sleep(idle), if self.own.is_some() && self.inflight.is_empty() => {
                    let owner = self.own.expect("guarded");
                    let watching = owner.lease.upgrade().is_some_and(|l| l.holds_watch(self.addr));
                    if !watching {
                        // Given back to the node's allowance; the client's next such
                        // command opens another. Jobs that raced the close go round again.
                        rx.close();
                        let proxy = self.proxy.upgrade();
                        while let Ok(job) = rx.try_recv() {
                            if let Some(proxy) = &proxy {
                                proxy.dispatch(job);
                            }
                        }
                        return None;
                    }
                }
                _ = stall_check.tick(), if !self.inflight.is_empty() => {
                    let stalled = self.inflight.front().is_some_and(|f| f.sent.elapsed() > STALL);
                    if stalled && self.proxy.upgrade().is_some_and(|p| p.node_failed(self.addr)) {
                        return Some("no reply, and the cluster has failed the node".into());
                    }
                }
            }
        }
    }

    /// Hands every complete reply in the read buffer to its job.
    fn replies(&mut self) -> Result<(), String> {
        let now = Instant::now();
        while let Some(len) = self.scanner.scan(&self.rbuf).map_err(|e| e.to_string())? {
            let frame = self.rbuf.split_to(len).freeze();
            if self.skip > 0 {
                self.skip -= 1;
                if frame.first() == Some(&b'-') {
                    let text = String::from_utf8_lossy(&frame).trim_end().to_string();
                    return Err(format!("refused on connect: {text}"));
                }
                continue;
            }
            if self.resp3 && frame.first() == Some(&b'>') {
                continue; // an out-of-band push, not a reply
            }
            let Some(front) = self.inflight.front_mut() else {
                return Err("reply without a request".into());
            };
            if front.skip > 0 {
                front.skip -= 1;
                if front.redirect.is_none() && frame.first() == Some(&b'-') {
                    front.redirect = classify(&frame, self.addr).map(Box::new);
                }
                continue;
            }
            let done = self.inflight.pop_front().expect("front exists");
            self.metrics.backend_inflight.dec();
            self.latency
                .observe(now.saturating_duration_since(done.sent).as_secs_f64());
            match done.redirect {
                // Nothing of the transaction ran: it goes where its slot is, whole.
                Some(redirect) if frame.starts_with(b"-EXECABORT") => {
                    if let Some(proxy) = self.proxy.upgrade() {
                        proxy.redirect(done.job, *redirect);
                    }
                }
                _ => self.complete(done.job, frame),
            }
        }
        Ok(())
    }

    fn complete(&self, mut job: Job, frame: Bytes) {
        let loaded_before = job.prefix().is_some_and(|p| p.starts_with(SCRIPT_LOAD));
        if frame.starts_with(b"-NOSCRIPT") && !loaded_before {
            // The node lost the script (a failover, a restart, SCRIPT FLUSH): if the proxy
            // knows its body, load it and run the request again, as one unit, once. An
            // ASKING already in front stays right before the request.
            if let Some(proxy) = self.proxy.upgrade() {
                if let Some(load) = proxy.script_load_for(&job.raw) {
                    let mut prefix = BytesMut::from(&load[..]);
                    let extra = job.extra();
                    if let Some(asking) = &extra.prefix {
                        prefix.extend_from_slice(asking);
                    }
                    extra.prefix_replies += 1;
                    extra.prefix = Some(prefix.freeze());
                    if let Err(job) = proxy.node(self.addr).send(job) {
                        let _ = job.reply.send(frame);
                    }
                    return;
                }
            }
        }
        if frame.first() == Some(&b'-') {
            if let Some(redirect) = classify(&frame, self.addr) {
                if let Some(proxy) = self.proxy.upgrade() {
                    proxy.redirect(job, redirect);
                    return;
                }
            }
        }
        // The client may have gone; its reply is then dropped.
        let _ = job.reply.send(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_stays_small_to_move() {
        // Every request's job is moved through a channel and two queues; what only a few
        // carry is boxed.
        assert!(
            std::mem::size_of::<Job>() <= 80,
            "{}",
            std::mem::size_of::<Job>()
        );
    }

    #[test]
    fn classifies_cluster_errors() {
        let from = "10.0.0.1:7000";
        assert_eq!(
            classify(b"-MOVED 3999 127.0.0.1:6381\r\n", from),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            classify(b"-ASK 12 :7002\r\n", from),
            Some(Redirect::Ask {
                slot: 12,
                addr: "10.0.0.1:7002".into()
            })
        );
        assert_eq!(
            classify(
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                from
            ),
            Some(Redirect::Hold(Reason::TryAgain))
        );
        assert!(matches!(
            classify(b"-CLUSTERDOWN Hash slot not served\r\n", from),
            Some(Redirect::Hold(Reason::ClusterDown(_)))
        ));
        assert_eq!(classify(b"-ERR wrong number of arguments\r\n", from), None);
        assert_eq!(
            classify(b"-WRONGTYPE Operation against a key\r\n", from),
            None
        );
        assert_eq!(classify(b"-MOVED 99999 h:1\r\n", from), None);
        assert_eq!(classify(b"-MOVED\r\n", from), None);
    }
}
