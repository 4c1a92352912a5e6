//! One connection to a node, owned by one task.
//!
//! The task takes [`Job`]s from its queue in batches, writes them with one syscall, and
//! matches replies to jobs through an in-flight FIFO. Replies are passed on as the bytes
//! that came; only an error reply's text is looked at, to absorb redirects: `MOVED` and
//! `ASK` are handed back at once (in reply order, so a client's requests keep their
//! order), and `TRYAGAIN`, `CLUSTERDOWN`, `LOADING` or a lost connection park the job to
//! be retried. What is handed back goes through [`Dispatch`], the task's one way to the
//! rest of the data plane.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prometheus::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{debug, warn};

pub use super::job::Tracks;
use super::job::{Holder, Job};
use super::turns::Turn;
use crate::metrics::{Metrics, Runs, Took};
use crate::protocol::{ReplyScanner, Request};
use crate::proxy::buffers::{grow_aside, Outgoing, GROW_ASIDE};
use crate::proxy::redirect::{classify, Reason, Redirect};
use crate::routing::Hint;
use crate::tls::BackendTls;

/// Most jobs taken off a connection's queue for one write.
const BATCH: usize = 512;
/// How often a connection with requests in flight checks that its node still answers.
const STALL_CHECK: Duration = Duration::from_millis(250);
/// A request unanswered this long, on a node the cluster has failed, is sent elsewhere.
const STALL: Duration = Duration::from_secs(1);

const HELLO3: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
const READONLY: &[u8] = b"*1\r\n$8\r\nREADONLY\r\n";

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

/// What a connection task asks of the rest of the data plane: everything it does with a
/// job other than handing the client its reply. The proxy implements it.
pub trait Dispatch: Send + Sync {
    /// Sends a job by the slot map, or queues it behind its slot's waiting requests.
    fn dispatch(&self, job: Job);
    /// Parks a job in the hold queue, to be tried again.
    fn park(&self, job: Job, reason: Reason);
    /// Follows a redirect a node answered for `job`.
    fn redirect(&self, job: Job, redirect: Redirect);
    /// Sends a job to the node at `addr`; gives it back if that cannot be done now.
    fn send_to(&self, addr: &str, job: Job) -> Result<(), Job>;
    /// True when the cluster has given up on the node at `addr`.
    fn node_failed(&self, addr: &str) -> bool;
    /// How long a request may wait for its answer (`hold.timeout`, as the settings are now).
    fn hold_timeout(&self) -> Duration;
    /// For an EVALSHA whose script the proxy knows: the `SCRIPT LOAD` that restores it.
    fn script_load_for(&self, raw: &Bytes) -> Option<(Bytes, u8)>;
    /// What a batch sent to the master at `addr` waits for, as the settings are now
    /// (`durability.ack` and its timeouts are read at every batch, so a reload is in force
    /// on connections that exist); `None` with `ack = "master"`.
    fn durability(&self, addr: &str) -> Option<Durability>;
    /// Counts a write answered an error rather than sent twice.
    fn not_retried(&self);
    /// Sends a keyless job to the next master in turn; gives it back once every master
    /// has had it.
    fn next_master(&self, job: Job) -> Result<(), Job>;
    /// Tells the control plane something.
    fn hint(&self, hint: Hint);
}

/// What `durability.ack = "replicated"` asks of a batch: its replies wait until the
/// master's replicas have what it wrote or read.
#[derive(Clone, Debug)]
pub struct Durability {
    /// Replicas the `WAIT` asks for: every one the cluster sees up, and at least one (see
    /// `ClusterView::replicas_to_wait`).
    pub replicas: usize,
    /// How long one `WAIT` may take (`durability.wait_timeout`).
    pub wait_timeout: Duration,
    /// How long the writes may be held for their replicas (`hold.timeout`).
    pub hold_timeout: Duration,
    /// The master's fences, one written before each `WAIT` (see `slot_table::fence_write`):
    /// without one, a node that counts only the connection's own writes in `WAIT` would
    /// let a read answer with what another connection wrote and no replica has. The next
    /// is tried when the node refuses one (its slot is being moved).
    pub fences: Option<Arc<[Bytes]>>,
}

/// Why a connection to a node ended, or could not start.
#[derive(Debug)]
pub enum Broken {
    /// The connection could not be made.
    Connect(std::io::Error),
    Write(std::io::Error),
    Read(std::io::Error),
    /// The node closed it.
    Closed,
    /// The node refused what the connection starts with (`AUTH`, `HELLO`, ...): its reply.
    Refused(String),
    /// The node's bytes are not RESP.
    Unreadable(crate::protocol::ProtocolError),
    /// A reply came with no request waiting for it.
    Unasked,
    /// Requests waited, and the cluster has failed the node over.
    NodeFailed,
    /// The oldest request waited `hold.timeout` with no reply.
    NoReply(Duration),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Connect(e) => write!(f, "connect: {e}"),
            Broken::Write(e) => write!(f, "write: {e}"),
            Broken::Read(e) => write!(f, "read: {e}"),
            Broken::Closed => f.write_str("connection closed by the node"),
            Broken::Refused(reply) => write!(f, "refused on connect: {reply}"),
            Broken::Unreadable(e) => e.fmt(f),
            Broken::Unasked => f.write_str("reply without a request"),
            Broken::NodeFailed => f.write_str("no reply, and the cluster has failed the node"),
            Broken::NoReply(limit) => {
                write!(f, "no reply in {} ms (hold.timeout)", limit.as_millis())
            }
        }
    }
}

impl Broken {
    /// The node's error reply to the greeting.
    pub fn refused(frame: &[u8]) -> Broken {
        Broken::Refused(String::from_utf8_lossy(frame).trim_end().to_string())
    }
}

/// A script's error for a key its node does not serve (Redis 7).
const NON_LOCAL_KEY: &[u8] = b"-ERR Script attempted to access a non local key";

/// The client a dedicated connection belongs to.
pub struct Owner {
    pub(super) lease: Weak<dyn Holder>,
    /// Returned to the node's allowance when the connection task ends.
    pub(super) _permit: OwnedSemaphorePermit,
    /// A socket already connected to the node (a node's spare), used first.
    pub(super) connected: Option<crate::tls::Stream>,
    /// Its place among the node's new dedicated connections: it writes first after
    /// those opened before it (see `turns`).
    pub(super) turn: Option<Turn>,
    /// The connection tracks the keys its client reads (see `tracking`).
    pub(super) tracks: Option<Tracks>,
}

/// What a connection task connects to.
#[derive(Clone)]
pub struct Target {
    pub(super) addr: String,
    pub(super) resp3: bool,
    /// The cluster's `AUTH` request, when it needs one.
    pub(super) auth: Option<Bytes>,
    /// Reads may go to replicas: connections say `READONLY`.
    pub(super) readonly: bool,
    /// TLS towards the node.
    pub(super) tls: Option<BackendTls>,
    pub(super) connect_timeout: Duration,
    /// A dedicated connection idle this long is given back.
    pub(super) dedicated_idle: Duration,
    pub(super) metrics: Arc<Metrics>,
    /// This node's child of the backend latency histogram.
    pub(super) latency: Histogram,
    /// `durability.ack = "replicated"` is in force (the proxy's, changed by a reload).
    pub(super) replicated: Arc<AtomicBool>,
}

/// A `WAIT` sent after a batch (`durability.ack = "replicated"`), and the replies of the
/// batch, held until the replicas have what they wrote or saw.
struct Barrier {
    /// Jobs in flight between the previous barrier and this one.
    ahead: usize,
    /// The replicas it waits for.
    replicas: usize,
    /// When the first `WAIT` for these replies went out.
    since: Instant,
    /// How long they may be held: `hold.timeout` when it went out.
    hold_timeout: Duration,
    /// Replies the node gave, not yet given to their clients.
    held: Vec<(Job, Bytes)>,
    /// Which of the master's fences went before the `WAIT`, if one did.
    fence: Option<usize>,
    /// The fence's reply is still to come, ahead of the `WAIT`'s.
    fence_reply: bool,
    /// The node refused the fence (its slot moved, or is being moved).
    fence_refused: bool,
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

pub async fn run(
    target: Target,
    mut rx: mpsc::UnboundedReceiver<Job>,
    proxy: Weak<dyn Dispatch>,
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
        replicated,
    } = target;
    let mut batch = Vec::with_capacity(BATCH);
    let mut owner = owner;
    let mut connected = owner.as_mut().and_then(|o| o.connected.take());
    let mut turn = owner.as_mut().and_then(|o| o.turn.take());
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return; // the node was dropped
        }
        let stream = match connected.take() {
            Some(stream) => Ok(stream),
            None => crate::tls::connect(&addr, limit, tls.as_ref()).await,
        };
        let stream = match stream {
            Ok(stream) => {
                metrics.backend_connects_ok.inc();
                stream
            }
            Err(e) => {
                metrics.backend_connects_failed.inc();
                debug!(%addr, error = %e, "connect failed");
                turn = None; // it gives up its turn
                fail_all(
                    &proxy,
                    &addr,
                    batch.drain(..),
                    &Broken::Connect(e).to_string(),
                );
                continue;
            }
        };
        if let (Some(lease), Some(local)) = (
            owner.as_ref().and_then(|o| o.lease.upgrade()),
            stream.local_addr(),
        ) {
            lease.connected(&addr, local);
        }
        let mut conn = Connection {
            addr: &addr,
            proxy: &proxy,
            inflight: VecDeque::new(),
            wbuf: Outgoing::with_capacity(16 * 1024),
            rbuf: BytesMut::with_capacity(16 * 1024),
            rbuf_aside: false,
            scanner: ReplyScanner::default(),
            own: owner.as_ref(),
            idle,
            skip: 0,
            metrics: &metrics,
            latency: Runs::new(&latency),
            barriers: VecDeque::new(),
            unfenced: 0,
            replicated: &replicated,
            job_last: false,
            tail_unread: false,
            turn: turn.take(),
            heard: Instant::now(),
        };
        // It goes out with the first batch.
        let (hello, replies) = greeting(auth.as_deref(), readonly, resp3);
        conn.wbuf.extend_from_slice(&hello);
        conn.skip = replies;
        if let Some(tracks) = owner.as_ref().and_then(|o| o.tracks.as_ref()) {
            conn.wbuf.extend_from_slice(&tracks.start);
            conn.skip += 1;
        }
        let gauge = if owner.is_some() {
            &metrics.backend_dedicated_connections
        } else {
            &metrics.backend_connections
        };
        gauge.inc();
        let error = conn.serve(stream, &mut rx, &mut batch).await;
        gauge.dec();
        let in_flight = conn.inflight.len();
        metrics.backend_inflight.sub(in_flight as i64);
        let unanswered = conn.unanswered(&mut batch);
        let Some(error) = error else { return };
        if let Some(lease) = owner.as_ref().and_then(|o| o.lease.upgrade()) {
            lease.lost(&addr);
        }
        warn!(%addr, %error, in_flight, "backend connection lost");
        let error = error.to_string();
        lost(&proxy, &addr, unanswered.into_iter(), &error);
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

/// Passes an `invalidate` push of a tracking connection to its client, or notes that one
/// was lost.
fn pass_invalidation(tracks: &Tracks, frame: Bytes) {
    let Some(pushes) = &tracks.pushes else { return };
    if !frame.starts_with(b">2\r\n$10\r\ninvalidate\r\n") {
        return;
    }
    if pushes.try_send(frame).is_err() {
        tracks
            .lost
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Ready when the client of the first job in flight has gone away.
fn client_gone(inflight: &mut VecDeque<InFlight>, cx: &mut Context<'_>) -> Poll<()> {
    match inflight.front_mut() {
        Some(front) => front.job.reply.poll_closed(cx),
        None => Poll::Pending,
    }
}

fn fail_all(proxy: &Weak<dyn Dispatch>, addr: &str, jobs: impl Iterator<Item = Job>, error: &str) {
    lost(proxy, addr, jobs.map(|job| (job, Fate::NotSent)), error);
}

/// What is known of a job on a connection that broke.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It never left the proxy.
    NotSent,
    /// It was the last thing written, and its end never reached the node: the write failed,
    /// or the node reset the connection (`ECONNRESET`).
    /// A socket is reset when it is closed with data unread, or when data reaches it after
    /// it was closed (a killed node; a connection still in the listen backlog when the
    /// node's listener closed): either way the last bytes sent were never read, and a
    /// command runs only once read whole. A node does not reset a connection it has read
    /// to the end (Redis never closes with a zero linger).
    Unread,
    /// It was written; no reply came.
    MayHaveRun,
    /// The node applied it; its replicas did not confirm it.
    Unconfirmed,
}

/// Jobs of a connection that broke: sent again where that cannot apply a write twice,
/// else answered an error that says what is known.
fn lost(
    proxy: &Weak<dyn Dispatch>,
    addr: &str,
    jobs: impl Iterator<Item = (Job, Fate)>,
    error: &str,
) {
    let Some(proxy) = proxy.upgrade() else { return };
    proxy.hint(Hint::Refresh);
    for (job, fate) in jobs {
        if job.once && matches!(fate, Fate::MayHaveRun | Fate::Unconfirmed) {
            let what = match fate {
                Fate::Unconfirmed => "was applied on the master but not confirmed by its replicas",
                _ => "may or may not have been applied",
            };
            let text = format!(
                "ERR slotguard: the connection to {addr} broke ({error}); this write {what}, and it is not sent again because it would apply twice"
            );
            proxy.not_retried();
            tracing::warn!(addr, error, what, "write not sent again");
            let _ = job.reply.send(crate::protocol::reply::error(&text));
            continue;
        }
        proxy.park(job, Reason::Unreachable(format!("{addr}: {error}")));
    }
}

struct Connection<'a> {
    addr: &'a str,
    proxy: &'a Weak<dyn Dispatch>,
    inflight: VecDeque<InFlight>,
    wbuf: Outgoing,
    rbuf: BytesMut,
    /// `rbuf` grew with [`grow_aside`]: once empty it is let go.
    rbuf_aside: bool,
    scanner: ReplyScanner,
    /// The connection is one client's own: it closes when that client goes, or when it
    /// was idle for `backend.dedicated_idle` and holds no WATCH and tracks nothing.
    own: Option<&'a Owner>,
    /// How long a dedicated connection may stay idle.
    idle: Duration,
    /// Replies still to come that answer no job (`AUTH`, `READONLY`, `HELLO 3`, sent on
    /// connect).
    skip: usize,
    metrics: &'a Metrics,
    /// This node's latencies, added to the shared histogram a run at a time.
    latency: Runs,
    /// `WAIT`s in flight, in the order sent (`durability.ack = "replicated"`).
    barriers: VecDeque<Barrier>,
    /// Jobs in flight after the last barrier.
    unfenced: usize,
    /// Every batch is fenced with a `WAIT` (`durability.ack = "replicated"`).
    replicated: &'a AtomicBool,
    /// The last bytes written are the newest job's: no `WAIT` went out after it.
    job_last: bool,
    /// Until the first write: waited for before it (see [`Owner::turn`]).
    turn: Option<Turn>,
    /// The node never read the last bytes written: a write failed, or the node reset the
    /// connection (see [`Fate::Unread`]).
    tail_unread: bool,
    /// When the node last said anything on this connection (or it was made).
    heard: Instant,
}

/// How a `SCRIPT LOAD` request begins.
const SCRIPT_LOAD: &[u8] = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n";
/// How the proxy's `FUNCTION LOAD REPLACE` begins.
const FUNCTION_LOAD: &[u8] = b"*4\r\n$8\r\nFUNCTION\r\n$4\r\nLOAD\r\n";
/// A node's answer to an FCALL of a function it does not have.
const FUNCTION_NOT_FOUND: &[u8] = b"-ERR Function not found";

impl Connection<'_> {
    /// Runs the connection until it fails (`Some(reason)`), or until its job queue is closed
    /// and every reply is in, or (a dedicated connection) its client is gone (`None`).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        batch: &mut Vec<Job>,
    ) -> Option<Broken> {
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
                // In replicated mode reads are fenced too: a node's WAIT covers every write
                // it had applied when the read ran, others' included, so what a read saw
                // is on a replica before its client hears it (no read of a write that a
                // failover then loses, nor of a deposed master, which no replica answers).
                let fenced = self.replicated.load(Ordering::Relaxed);
                self.unfenced += batch.len();
                self.job_last = true;
                for job in batch.drain(..) {
                    if let Some(extra) = &job.extra {
                        if let Some(prefix) = &extra.prefix {
                            self.wbuf.extend_from_slice(prefix);
                        }
                        if let Some(lead) = &extra.lead {
                            self.wbuf.extend_from_slice(lead);
                        }
                    }
                    self.wbuf.push(&job.raw);
                    self.inflight.push_back(InFlight {
                        skip: job.skipped_replies(),
                        redirect: None,
                        sent,
                        job,
                    });
                }
                if fenced {
                    self.fence(sent, Vec::new(), 0);
                }
            }
            if !self.wbuf.is_empty() {
                if let Some(turn) = &self.turn {
                    turn.wait().await;
                }
                // A TLS stream buffers records until flushed; TCP's flush does nothing.
                let written = async {
                    self.wbuf.write_all(&mut stream).await?;
                    stream.flush().await
                };
                if let Err(e) = written.await {
                    // Some of the buffer, its end at least, never reached the socket.
                    self.tail_unread = true;
                    return Some(Broken::Write(e));
                }
                self.wbuf.clear();
                self.turn = None; // the next new connection to the node may write
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) => return Some(Broken::Closed),
                    Ok(_) => {
                        self.heard = Instant::now();
                        if let Err(e) = self.replies() {
                            return Some(e);
                        }
                        if closed && self.settled() {
                            return None;
                        }
                        if self.rbuf.is_empty() && self.rbuf_aside {
                            // A large reply passed: its room goes.
                            self.rbuf = BytesMut::with_capacity(16 * 1024);
                            self.rbuf_aside = false;
                        }
                        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                            if self.rbuf.len() >= GROW_ASIDE {
                                self.rbuf = grow_aside(std::mem::take(&mut self.rbuf), 16 * 1024).await;
                                self.rbuf_aside = true;
                            } else {
                                self.rbuf.reserve(16 * 1024);
                            }
                        }
                    }
                    Err(e) => {
                        self.tail_unread = e.kind() == std::io::ErrorKind::ConnectionReset;
                        return Some(Broken::Read(e));
                    }
                },
                n = rx.recv_many(batch, BATCH), if !closed => if n == 0 {
                    if self.settled() {
                        return None;
                    }
                    closed = true; // finish what is in flight first
                },
                _ = poll_fn(|cx| client_gone(&mut self.inflight, cx)), if self.own.is_some() => {
                    // Closing the connection also ends a blocked command on the node.
                    return None;
                }
                _ = tokio::time::sleep(idle), if self.own.is_some_and(|o| o.tracks.is_none()) && self.settled() => {
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
                _ = stall_check.tick(), if !self.settled() => {
                    if let Some(why) = self.stalled() {
                        return Some(why);
                    }
                }
            }
        }
    }

    /// Hands every complete reply in the read buffer to its job.
    fn replies(&mut self) -> Result<(), Broken> {
        let mut answered = 0;
        let read = self.take_replies(&mut answered);
        // Counted once for all the replies read (a read carries many), not once a reply.
        self.metrics.backend_inflight.sub(answered);
        self.latency.settle();
        read
    }

    /// Matches the replies in the read buffer to the jobs in flight; `answered` counts
    /// the jobs that left the in-flight FIFO.
    fn take_replies(&mut self, answered: &mut i64) -> Result<(), Broken> {
        let mut took = Took::now();
        while let Some(len) = self.scanner.scan(&self.rbuf).map_err(Broken::Unreadable)? {
            let frame = self.rbuf.split_to(len).freeze();
            if frame.first() == Some(&b'>') {
                // An out-of-band push, not a reply (a tracking connection may have
                // switched to RESP3 with HELLO).
                if let Some(tracks) = self.own.and_then(|o| o.tracks.as_ref()) {
                    pass_invalidation(tracks, frame);
                }
                continue;
            }
            if self.skip > 0 {
                self.skip -= 1;
                if frame.first() == Some(&b'-') {
                    return Err(Broken::refused(&frame));
                }
                continue;
            }
            if let Some(barrier) = self.barriers.front_mut().filter(|b| b.ahead == 0) {
                if barrier.fence_reply {
                    barrier.fence_reply = false;
                    barrier.fence_refused = !frame.starts_with(b"+OK");
                    continue;
                }
                let barrier = self.barriers.pop_front().expect("front exists");
                self.waited(barrier, &frame);
                continue;
            }
            let Some(front) = self.inflight.front_mut() else {
                return Err(Broken::Unasked);
            };
            if front.skip > 0 {
                front.skip -= 1;
                if front.redirect.is_none() && frame.first() == Some(&b'-') {
                    front.redirect = classify(&frame, self.addr).map(Box::new);
                }
                continue;
            }
            let done = self.inflight.pop_front().expect("front exists");
            *answered += 1;
            self.latency.observe(took.of(done.sent));
            let fence = match self.barriers.front_mut() {
                Some(barrier) => {
                    barrier.ahead -= 1;
                    Some(barrier)
                }
                None => {
                    self.unfenced -= 1;
                    None
                }
            };
            if let Some(barrier) = fence {
                // Applied, or read, by the node: its client hears of it once the replicas
                // have what it wrote or saw.
                if frame.first() != Some(&b'-') && done.redirect.is_none() {
                    barrier.held.push((done.job, frame));
                    continue;
                }
            }
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

    /// Every job not answered, with what is known of it: written (in flight), applied
    /// and not confirmed (held for a `WAIT`), or never sent (`batch`). A job that was sent
    /// has waited since then: if it is held again, `hold.timeout` counts from there.
    fn unanswered(&mut self, batch: &mut Vec<Job>) -> Vec<(Job, Fate)> {
        fn waiting_since(mut job: Job, sent: Instant) -> Job {
            job.held_since.get_or_insert(sent);
            job
        }
        let unread = (self.tail_unread && self.job_last)
            .then(|| self.inflight.pop_back())
            .flatten()
            .map(|f| (waiting_since(f.job, f.sent), Fate::Unread));
        let sent = self
            .inflight
            .drain(..)
            .map(|f| (waiting_since(f.job, f.sent), Fate::MayHaveRun));
        let held = self.barriers.drain(..).flat_map(|b| {
            let since = b.since;
            b.held
                .into_iter()
                .map(move |(job, _)| (waiting_since(job, since), Fate::Unconfirmed))
        });
        let unsent = batch.drain(..).map(|job| (job, Fate::NotSent));
        sent.chain(unread).chain(held).chain(unsent).collect()
    }

    /// Why the connection is given up on while requests on it wait for their answers:
    /// the cluster has failed the node (after [`STALL`]), or, on a shared connection, the
    /// node has said nothing for `hold.timeout` while one waited that long (a node stopped
    /// where the cluster cannot fail it over, with no majority, would keep them for as
    /// long as it stays stopped; a node that answers the `WAIT`s of writes held for their
    /// replicas is not silent). What was in flight is then answered as on a broken
    /// connection, its wait counted from when it was sent (see
    /// [`Connection::unanswered`]). A client's own connection may wait on a blocking
    /// command for as long as it asked, so only the first applies there.
    fn stalled(&self) -> Option<Broken> {
        let oldest = self.inflight.front().map(|f| f.sent);
        let waited = oldest
            .or_else(|| self.barriers.front().map(|b| b.since))?
            .elapsed();
        if waited <= STALL {
            return None;
        }
        let proxy = self.proxy.upgrade()?;
        if proxy.node_failed(self.addr) {
            return Some(Broken::NodeFailed);
        }
        let limit = proxy.hold_timeout();
        let silent = waited.min(self.heard.elapsed());
        (self.own.is_none() && silent >= limit).then_some(Broken::NoReply(limit))
    }

    /// Nothing is in flight: no request, no `WAIT`.
    fn settled(&self) -> bool {
        self.inflight.is_empty() && self.barriers.is_empty()
    }

    /// Sends `WAIT` for the replicas of this master after everything sent so far;
    /// `held`: replies already waiting for it. With `ack = "master"` they go out at once.
    /// `candidate`: which of the master's fences to write first.
    fn fence(&mut self, since: Instant, held: Vec<(Job, Bytes)>, candidate: usize) {
        let durability = self.proxy.upgrade().and_then(|p| p.durability(self.addr));
        let Some(Durability {
            replicas,
            wait_timeout,
            hold_timeout,
            fences,
        }) = durability
        else {
            for (job, frame) in held {
                self.complete(job, frame);
            }
            return;
        };
        let timeout = wait_timeout.as_millis().max(1).to_string();
        let wait = Request::from_args(&["WAIT", &replicas.to_string(), &timeout]);
        let fence = fences.and_then(|f| Some((candidate, f.get(candidate)?.clone())));
        if let Some((_, write)) = &fence {
            self.wbuf.extend_from_slice(write);
        }
        self.wbuf.extend_from_slice(wait.raw());
        self.job_last = false;
        self.barriers.push_back(Barrier {
            ahead: std::mem::take(&mut self.unfenced),
            replicas,
            since,
            hold_timeout,
            held,
            fence: fence.as_ref().map(|(i, _)| *i),
            fence_reply: fence.is_some(),
            fence_refused: false,
        });
    }

    /// A `WAIT` answered: its writes' replies go to their clients once the replicas have
    /// them; while short, it is asked again until `hold.timeout`, and then the clients
    /// hear that the write was applied but not confirmed.
    fn waited(&mut self, barrier: Barrier, frame: &Bytes) {
        let acked = crate::protocol::Value::parse(frame)
            .ok()
            .and_then(|v| v.as_int());
        let Barrier {
            replicas,
            since,
            hold_timeout,
            mut held,
            fence,
            fence_refused,
            ..
        } = barrier;
        if let (true, Some(tried)) = (fence_refused, fence) {
            let more = self
                .proxy
                .upgrade()
                .and_then(|p| p.durability(self.addr))
                .and_then(|d| d.fences)
                .is_some_and(|f| tried + 1 < f.len());
            if more && !held.is_empty() && since.elapsed() < hold_timeout {
                // Its slot is being moved: the next slot's fence, and its `WAIT` again.
                self.fence(since, held, tried + 1);
                return;
            }
            // Every fence refused: the `WAIT` is trusted as the node counts it, and
            // counted.
            self.metrics.fences_refused.inc();
        }
        if acked.is_some_and(|n| n >= replicas as i64) || held.is_empty() {
            for (job, frame) in held {
                self.complete(job, frame);
            }
            return;
        }
        if acked.is_some() && since.elapsed() < hold_timeout {
            self.metrics.wait_retries.inc();
            self.fence(since, held, 0);
            return;
        }
        let answer = match acked {
            Some(n) => format!("WAIT answered {n} of {replicas}"),
            None => {
                // WAIT refused: the node is a master no more (a failover unblocked it).
                // What can run twice is sent again, to the new master, where it is
                // waited for in turn; the rest cannot be known to have reached it.
                let Some(proxy) = self.proxy.upgrade() else {
                    return;
                };
                let reason = format!("{}: a master no more", self.addr);
                let (in_doubt, again): (Vec<_>, Vec<_>) =
                    held.into_iter().partition(|(job, _)| job.once);
                for (job, _) in again {
                    proxy.park(job, Reason::NotReady(reason.clone()));
                }
                held = in_doubt;
                format!(
                    "WAIT answered {}",
                    String::from_utf8_lossy(frame).trim_end()
                )
            }
        };
        if held.is_empty() {
            return;
        }
        let (writes, reads): (Vec<_>, Vec<_>) = held.into_iter().partition(|(job, _)| job.write);
        self.metrics.writes_unconfirmed.inc_by(writes.len() as u64);
        let waited = since.elapsed().as_secs_f64();
        let applied = crate::protocol::reply::error(&format!(
            "ERR slotguard: applied on the master {} but not confirmed by its replicas within {waited:.1}s ({answer})",
            self.addr,
        ));
        let read = crate::protocol::reply::error(&format!(
            "ERR slotguard: read on the master {}, whose writes its replicas did not confirm within {waited:.1}s ({answer}); not answered, as it may see a write that a failover loses",
            self.addr,
        ));
        for (job, _) in writes {
            let _ = job.reply.send(applied.clone());
        }
        for (job, _) in reads {
            let _ = job.reply.send(read.clone());
        }
    }

    fn complete(&self, mut job: Job, frame: Bytes) {
        let loaded_before = job
            .prefix()
            .is_some_and(|p| p.starts_with(SCRIPT_LOAD) || p.starts_with(FUNCTION_LOAD));
        let missing = frame.starts_with(b"-NOSCRIPT") || frame.starts_with(FUNCTION_NOT_FOUND);
        if missing && !loaded_before {
            // The node lost the script or the library (a failover, a restart, a flush): if
            // the proxy knows it, load it and run the request again, as one unit, once. An
            // ASKING already in front stays right before the request.
            if let Some(proxy) = self.proxy.upgrade() {
                if let Some((load, replies)) = proxy.script_load_for(&job.raw) {
                    let mut prefix = BytesMut::from(&load[..]);
                    let extra = job.extra();
                    if let Some(asking) = &extra.prefix {
                        prefix.extend_from_slice(asking);
                    }
                    extra.prefix_replies += replies;
                    extra.prefix = Some(prefix.freeze());
                    if let Err(job) = proxy.send_to(self.addr, job) {
                        let _ = job.reply.send(frame);
                    }
                    return;
                }
            }
        }
        if frame.starts_with(NON_LOCAL_KEY) && job.slot.is_none() && job.lease().is_none() {
            // A script that declared no key touched one this master does not serve. It
            // stopped at that access, before any write of its own to a key: another
            // master may serve it (each is asked once, as one node would have).
            if let Some(proxy) = self.proxy.upgrade() {
                match proxy.next_master(job) {
                    Ok(()) => return,
                    Err(back) => job = back,
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
    use std::sync::{Arc, Mutex};

    use tokio::io::{duplex, DuplexStream};
    use tokio::sync::{oneshot, Semaphore};

    use super::*;

    /// Records what a connection hands back.
    #[derive(Default)]
    struct Recorder {
        parked: Mutex<Vec<(Bytes, Reason)>>,
        redirected: Mutex<Vec<(Bytes, Redirect)>>,
        dispatched: Mutex<Vec<Bytes>>,
        replicas: std::sync::atomic::AtomicUsize,
        /// Each `WAIT` is fenced with [`FENCE`].
        fenced: AtomicBool,
    }

    impl Dispatch for Recorder {
        fn dispatch(&self, job: Job) {
            self.dispatched.lock().unwrap().push(job.raw);
        }
        fn park(&self, job: Job, reason: Reason) {
            self.parked.lock().unwrap().push((job.raw, reason));
        }
        fn redirect(&self, job: Job, redirect: Redirect) {
            self.redirected.lock().unwrap().push((job.raw, redirect));
        }
        fn send_to(&self, _: &str, job: Job) -> Result<(), Job> {
            Err(job)
        }
        fn node_failed(&self, _: &str) -> bool {
            false
        }
        fn hold_timeout(&self) -> Duration {
            Duration::from_secs(20)
        }
        fn script_load_for(&self, _: &Bytes) -> Option<(Bytes, u8)> {
            None
        }
        fn next_master(&self, job: Job) -> Result<(), Job> {
            Err(job)
        }
        /// `ack = "master"` until [`Fixture::replicated`] sets replicas to wait for.
        fn durability(&self, _: &str) -> Option<Durability> {
            let replicas = self.replicas.load(std::sync::atomic::Ordering::Relaxed);
            (replicas > 0).then_some(Durability {
                replicas,
                wait_timeout: Duration::from_millis(100),
                hold_timeout: Duration::from_secs(5),
                fences: self
                    .fenced
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .then(|| Arc::from([Bytes::from_static(FENCE), Bytes::from_static(FENCE_2)])),
            })
        }
        fn not_retried(&self) {}
        fn hint(&self, _: Hint) {}
    }

    const ADDR: &str = "10.0.0.1:7000";

    struct Fixture {
        recorder: Arc<Recorder>,
        replicated: AtomicBool,
        weak: Weak<dyn Dispatch>,
        metrics: Metrics,
        latency: Histogram,
    }

    impl Fixture {
        fn new() -> Fixture {
            let recorder = Arc::new(Recorder::default());
            let weak: Weak<dyn Dispatch> = Arc::downgrade(&recorder) as Weak<dyn Dispatch>;
            let metrics = Metrics::new();
            let latency = metrics.node_latency(ADDR);
            Fixture {
                recorder,
                replicated: AtomicBool::new(false),
                weak,
                metrics,
                latency,
            }
        }

        fn connection<'a>(&'a self, own: Option<&'a Owner>) -> Connection<'a> {
            Connection {
                addr: ADDR,
                proxy: &self.weak,
                inflight: VecDeque::new(),
                wbuf: Outgoing::with_capacity(0),
                rbuf: BytesMut::new(),
                rbuf_aside: false,
                scanner: ReplyScanner::default(),
                own,
                idle: Duration::from_secs(30),
                skip: 0,
                metrics: &self.metrics,
                latency: Runs::new(&self.latency),
                barriers: VecDeque::new(),
                unfenced: 0,
                replicated: &self.replicated,
                job_last: false,
                tail_unread: false,
                turn: None,
                heard: Instant::now(),
            }
        }

        /// A connection answering writes once `replicas` replicas have them.
        fn replicated<'a>(&'a self, replicas: usize) -> Connection<'a> {
            self.recorder
                .replicas
                .store(replicas, std::sync::atomic::Ordering::Relaxed);
            self.replicated.store(replicas > 0, Ordering::Relaxed);
            self.connection(None)
        }
    }

    fn job(raw: &'static [u8]) -> (Job, oneshot::Receiver<Bytes>) {
        Job::new(Bytes::from_static(raw), Some(1), 1, false)
    }

    /// Reads from the node's end until `want` bytes came.
    async fn read_exactly(node: &mut DuplexStream, want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        node.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn replies_are_matched_in_order_and_redirects_handed_back() {
        let fx = Fixture::new();
        let mut conn = fx.connection(None);
        let (ours, mut node) = duplex(4096);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (a, ra) = job(b"*1\r\n$1\r\na\r\n");
        let (b, _rb) = job(b"*1\r\n$1\r\nb\r\n");
        let (c, rc) = job(b"*1\r\n$1\r\nc\r\n");
        let (d, rd) = job(b"*1\r\n$1\r\nd\r\n");
        let mut batch = vec![a, b, c, d];
        let node_side = async {
            let sent = read_exactly(&mut node, 4 * 11).await;
            assert_eq!(
                sent,
                b"*1\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n*1\r\n$1\r\nc\r\n*1\r\n$1\r\nd\r\n"
            );
            // Replies in two pieces, the cut inside a frame.
            node.write_all(b"+first\r\n-MOVED 1 10.0.0.2:7000\r\n$5\r\nth")
                .await
                .unwrap();
            node.write_all(b"ird\r\n-ERR plain\r\n").await.unwrap();
            drop(tx); // nothing more to send: the connection ends once replies are in
            node
        };
        let (ended, _node) = tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(ended.is_none(), "closed cleanly: {ended:?}");
        assert_eq!(&ra.await.unwrap()[..], b"+first\r\n");
        assert_eq!(&rc.await.unwrap()[..], b"$5\r\nthird\r\n");
        assert_eq!(&rd.await.unwrap()[..], b"-ERR plain\r\n");
        let redirected = fx.recorder.redirected.lock().unwrap();
        assert_eq!(redirected.len(), 1);
        assert_eq!(&redirected[0].0[..], b"*1\r\n$1\r\nb\r\n");
        assert_eq!(
            redirected[0].1,
            Redirect::Moved {
                slot: 1,
                addr: "10.0.0.2:7000".into()
            }
        );
    }

    #[tokio::test]
    async fn a_break_mid_batch_keeps_the_unanswered_jobs_in_order_to_retry() {
        let fx = Fixture::new();
        let mut conn = fx.connection(None);
        let (ours, mut node) = duplex(4096);
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let (a, ra) = job(b"*1\r\n$1\r\na\r\n");
        let (b, _rb) = job(b"*1\r\n$1\r\nb\r\n");
        let (c, _rc) = job(b"*1\r\n$1\r\nc\r\n");
        let mut batch = vec![a, b, c];
        let node_side = async move {
            read_exactly(&mut node, 3 * 11).await;
            // One reply and half of the next, then the node goes away.
            node.write_all(b"+one\r\n$3\r\ntw").await.unwrap();
            drop(node);
        };
        let (ended, ()) = tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(matches!(ended, Some(Broken::Closed)), "{ended:?}");
        assert_eq!(&ra.await.unwrap()[..], b"+one\r\n");
        let unanswered = conn.unanswered(&mut Vec::new());
        lost(
            &fx.weak,
            ADDR,
            unanswered.into_iter(),
            "connection closed by the node",
        );
        let parked = fx.recorder.parked.lock().unwrap();
        let raws: Vec<&[u8]> = parked.iter().map(|(raw, _)| &raw[..]).collect();
        assert_eq!(raws, [&b"*1\r\n$1\r\nb\r\n"[..], b"*1\r\n$1\r\nc\r\n"]);
        assert!(parked.iter().all(|(_, reason)| matches!(
            reason,
            Reason::Unreachable(why) if why == "10.0.0.1:7000: connection closed by the node"
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_dedicated_connection_is_given_back_after_dedicated_idle() {
        let fx = Fixture::new();
        let lease: Arc<dyn Holder> = Arc::new(NoWatch);
        let owner = Owner {
            lease: Arc::downgrade(&lease),
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            connected: None,
            turn: None,
            tracks: None,
        };
        let mut conn = fx.connection(Some(&owner));
        let (ours, _node) = duplex(4096);
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let started = tokio::time::Instant::now();
        let ended = conn.serve(ours, &mut rx, &mut Vec::new()).await;
        assert!(ended.is_none(), "given back, not failed: {ended:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        // The node's handle sees the queue closed and gives the next job back (its lease
        // then opens another connection).
        let (late, _r) = job(b"*1\r\n$4\r\nlate\r\n");
        assert!(tx.send(late).is_err(), "the queue is closed");
    }

    /// A client that holds no WATCH.
    struct NoWatch;

    impl Holder for NoWatch {
        fn connected(&self, _: &str, _: std::net::SocketAddr) {}
        fn lost(&self, _: &str) {}
        fn holds_watch(&self, _: &str) -> bool {
            false
        }
    }

    fn write(raw: &'static [u8], once: bool) -> (Job, oneshot::Receiver<Bytes>) {
        let (mut job, rx) = job(raw);
        job.write = true;
        job.once = once;
        (job, rx)
    }

    const WAIT_1: &[u8] = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n";
    const FENCE: &[u8] = b"*1\r\n$1\r\nf\r\n";
    const FENCE_2: &[u8] = b"*1\r\n$1\r\nF\r\n";

    /// The fence goes before every `WAIT`, the first and each one asked again, and its
    /// reply reaches no client; one the node refuses is followed by the next and its
    /// `WAIT`, and when every one is refused that is counted and the `WAIT` trusted.
    #[tokio::test]
    async fn each_wait_is_fenced_and_the_fence_answers_no_one() {
        let fx = Fixture::new();
        fx.recorder.fenced.store(true, Ordering::Relaxed);
        let mut conn = fx.replicated(1);
        let (ours, mut node) = duplex(4096);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (get, r_get) = job(b"*1\r\n$1\r\ng\r\n");
        let (get2, r_get2) = job(b"*1\r\n$1\r\nh\r\n");
        let mut batch = vec![get];
        let node_side = async {
            let fenced_wait = [FENCE, WAIT_1].concat();
            let sent = read_exactly(&mut node, 11 + fenced_wait.len()).await;
            assert!(
                sent.ends_with(&fenced_wait),
                "{}",
                String::from_utf8_lossy(&sent)
            );
            node.write_all(b"$1\r\nv\r\n+OK\r\n:0\r\n").await.unwrap();
            assert_eq!(
                read_exactly(&mut node, fenced_wait.len()).await,
                fenced_wait
            );
            node.write_all(b"+OK\r\n:1\r\n").await.unwrap();
            tx.send(get2).unwrap();
            read_exactly(&mut node, 11 + fenced_wait.len()).await;
            node.write_all(b"$1\r\nw\r\n-ASK 3 10.0.0.2:7000\r\n:1\r\n")
                .await
                .unwrap();
            let second = [FENCE_2, WAIT_1].concat();
            assert_eq!(read_exactly(&mut node, second.len()).await, second);
            node.write_all(b"-ASK 9 10.0.0.2:7000\r\n:1\r\n")
                .await
                .unwrap();
            drop(tx);
            node
        };
        let (ended, _node) = tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(ended.is_none(), "{ended:?}");
        assert_eq!(&r_get.await.unwrap()[..], b"$1\r\nv\r\n");
        assert_eq!(&r_get2.await.unwrap()[..], b"$1\r\nw\r\n");
        assert_eq!(fx.metrics.wait_retries.get(), 1);
        assert_eq!(fx.metrics.fences_refused.get(), 1);
    }

    #[tokio::test]
    async fn replicated_writes_and_reads_are_answered_once_their_wait_is() {
        let fx = Fixture::new();
        let mut conn = fx.replicated(1);
        let (ours, mut node) = duplex(4096);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (set, mut r_set) = write(b"*1\r\n$1\r\ns\r\n", false);
        let (get, mut r_get) = job(b"*1\r\n$1\r\ng\r\n");
        let mut batch = vec![set, get];
        let node_side = async {
            // One WAIT after the batch, not one per request.
            let sent = read_exactly(&mut node, 2 * 11 + WAIT_1.len()).await;
            assert!(sent.ends_with(WAIT_1), "{}", String::from_utf8_lossy(&sent));
            node.write_all(b"+OK\r\n$1\r\nv\r\n").await.unwrap();
            // Both wait for the replica: the write for what it applied, the read for what
            // it saw (another client's write the replica may not have yet).
            tokio::task::yield_now().await;
            assert!(r_set.try_recv().is_err(), "held until WAIT answers");
            assert!(r_get.try_recv().is_err(), "held until WAIT answers");
            // Short: asked again, and answered once the replica has it.
            node.write_all(b":0\r\n").await.unwrap();
            assert_eq!(read_exactly(&mut node, WAIT_1.len()).await, WAIT_1);
            node.write_all(b":1\r\n").await.unwrap();
            drop(tx);
            (node, r_set, r_get)
        };
        let (ended, (_node, r_set, r_get)) =
            tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(ended.is_none(), "{ended:?}");
        assert_eq!(&r_set.await.unwrap()[..], b"+OK\r\n");
        assert_eq!(&r_get.await.unwrap()[..], b"$1\r\nv\r\n");
        assert_eq!(fx.metrics.wait_retries.get(), 1);
    }

    #[tokio::test]
    async fn a_broken_connection_sends_again_only_what_cannot_apply_twice() {
        let fx = Fixture::new();
        let mut conn = fx.replicated(1);
        let (ours, mut node) = duplex(4096);
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let (incr_applied, r_applied) = write(b"*1\r\n$1\r\na\r\n", true);
        let (incr_sent, r_sent) = write(b"*1\r\n$1\r\nb\r\n", true);
        let (set_sent, _r) = write(b"*1\r\n$1\r\nc\r\n", false);
        let mut batch = vec![incr_applied, incr_sent, set_sent];
        let node_side = async move {
            read_exactly(&mut node, 3 * 11 + WAIT_1.len()).await;
            // The first INCR is applied; then the node goes away.
            node.write_all(b":1\r\n").await.unwrap();
            drop(node);
        };
        let (ended, ()) = tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(ended.is_some());
        let (never_sent, _r) = write(b"*1\r\n$1\r\nd\r\n", true);
        let unanswered = conn.unanswered(&mut vec![never_sent]);
        lost(&fx.weak, ADDR, unanswered.into_iter(), "gone");
        let applied = r_applied.await.unwrap();
        assert!(
            applied.starts_with(b"-ERR slotguard: the connection to 10.0.0.1:7000 broke (gone); this write was applied on the master but not confirmed by its replicas"),
            "{applied:?}"
        );
        let sent = r_sent.await.unwrap();
        assert!(
            String::from_utf8_lossy(&sent).contains("may or may not have been applied"),
            "{sent:?}"
        );
        // The SET can run twice, and the never-sent INCR never ran: both go again.
        let parked = fx.recorder.parked.lock().unwrap();
        let raws: Vec<&[u8]> = parked.iter().map(|(raw, _)| &raw[..]).collect();
        assert_eq!(raws, [&b"*1\r\n$1\r\nc\r\n"[..], b"*1\r\n$1\r\nd\r\n"]);
    }

    /// A node killed with the last write unread resets the connection: that write never
    /// ran and goes again; the one before it may have run and does not.
    #[tokio::test]
    async fn a_reset_sends_again_the_write_the_node_never_read() {
        let fx = Fixture::new();
        let mut conn = fx.connection(None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (node, _) = listener.accept().await.unwrap();
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let (read, r_read) = write(b"*1\r\n$1\r\na\r\n", true);
        let (unread, _r) = write(b"*1\r\n$1\r\nb\r\n", true);
        let mut batch = vec![read, unread];
        let node_side = async move {
            let mut node = node;
            let mut first = [0u8; 11];
            node.read_exact(&mut first).await.unwrap();
            // The second has arrived; the node dies without reading it.
            let mut peek = [0u8; 11];
            while node.peek(&mut peek).await.unwrap() < peek.len() {}
            drop(node);
        };
        let (ended, ()) = tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(
            ended
                .as_ref()
                .is_some_and(|e| e.to_string().contains("reset")),
            "{ended:?}"
        );
        let unanswered = conn.unanswered(&mut Vec::new());
        lost(&fx.weak, ADDR, unanswered.into_iter(), "reset");
        let answered = r_read.await.unwrap();
        assert!(
            String::from_utf8_lossy(&answered).contains("may or may not have been applied"),
            "{answered:?}"
        );
        let parked = fx.recorder.parked.lock().unwrap();
        let raws: Vec<&[u8]> = parked.iter().map(|(raw, _)| &raw[..]).collect();
        assert_eq!(raws, [&b"*1\r\n$1\r\nb\r\n"[..]]);
    }

    #[tokio::test]
    async fn a_wait_refused_by_a_demoted_master_sends_again_what_can_run_twice() {
        let fx = Fixture::new();
        let mut conn = fx.replicated(1);
        let (ours, mut node) = duplex(4096);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (set, _r_set) = write(b"*1\r\n$1\r\ns\r\n", false);
        let (incr, r_incr) = write(b"*1\r\n$1\r\ni\r\n", true);
        let mut batch = vec![set, incr];
        let node_side = async {
            read_exactly(&mut node, 2 * 11 + WAIT_1.len()).await;
            node.write_all(b"+OK\r\n:1\r\n-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)\r\n")
                .await
                .unwrap();
            drop(tx);
            node
        };
        let (ended, _node) = tokio::join!(conn.serve(ours, &mut rx, &mut batch), node_side);
        assert!(ended.is_none(), "{ended:?}");
        let incr = r_incr.await.unwrap();
        let parked = fx.recorder.parked.lock().unwrap();
        let raws: Vec<&[u8]> = parked.iter().map(|(raw, _)| &raw[..]).collect();
        assert_eq!(raws, [&b"*1\r\n$1\r\ns\r\n"[..]], "the SET goes again");
        assert!(
            String::from_utf8_lossy(&incr).contains("not confirmed by its replicas"),
            "{incr:?}"
        );
    }
}
