//! The hold queue: requests whose slot cannot be served right now wait here, per slot, in
//! arrival order, and are sent again when the slot map changes or after a short backoff.
//!
//! While a slot has waiting requests, every later request for it queues behind them (reads
//! too), so a client still reads its own writes. A request that waits longer than
//! `hold.timeout` gets an error naming its slot and why; past `hold.max_bytes` of waiting
//! requests, new ones fail at once instead of growing memory without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::backend::Job;
use crate::metrics::Metrics;
use crate::protocol::reply;

/// Why a request waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Behind earlier requests for the same slot.
    Queued,
    /// No node owns the slot in the current map.
    NoOwner,
    /// The owner could not be reached.
    Unreachable(String),
    /// The owner answered CLUSTERDOWN.
    ClusterDown(String),
    /// A multi-key request met a slot in migration.
    TryAgain,
    /// The owner is loading, or was a master no more.
    NotReady(String),
    /// Redirects did not settle within the hop limit.
    Redirects,
    /// The authority holds the slot while it repairs it.
    Repair,
}

impl Reason {
    /// The error a client gets when its request waited too long.
    fn error(&self, slot: Option<u16>, waited: Duration) -> String {
        let slot = match slot {
            Some(s) => format!("slot {s}"),
            None => "keyless request".to_string(),
        };
        let secs = waited.as_secs_f64();
        match self {
            Reason::TryAgain => {
                format!("TRYAGAIN {slot} stayed in migration (held {secs:.1}s)")
            }
            Reason::ClusterDown(text) => {
                format!("CLUSTERDOWN {slot} is not served (held {secs:.1}s): {text}")
            }
            Reason::NoOwner | Reason::Queued => {
                format!("CLUSTERDOWN {slot} has no owner (held {secs:.1}s)")
            }
            Reason::Unreachable(why) => {
                format!("CLUSTERDOWN {slot} has no reachable owner (held {secs:.1}s): {why}")
            }
            Reason::NotReady(why) => {
                format!("CLUSTERDOWN {slot} owner is not ready (held {secs:.1}s): {why}")
            }
            Reason::Redirects => {
                format!("CLUSTERDOWN {slot} redirects did not settle (held {secs:.1}s)")
            }
            Reason::Repair => {
                format!("TRYAGAIN {slot} has no owner: repair in progress (held {secs:.1}s)")
            }
        }
    }
}

/// First and longest pause between two attempts for one slot.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long an emptied queue remembers its failed attempts.
const FORGET_AFTER: Duration = Duration::from_secs(1);

struct Held {
    job: Job,
    reason: Reason,
}

/// The waiting requests of one slot (or of keyless requests).
struct Queue {
    jobs: VecDeque<Held>,
    /// Not sent again before this, unless the slot map changes.
    retry_at: Instant,
    /// Failed attempts in a row, for the backoff.
    attempts: u32,
    /// Slot-map generation at the last failure.
    generation: u64,
}

#[derive(Default)]
struct State {
    slots: FxHashMap<u16, Queue>,
    keyless: Option<Queue>,
    bytes: usize,
}

/// The hold queue.
pub struct Hold {
    state: Mutex<State>,
    /// Per slot: has waiting requests. Read on every request, without the lock.
    held: Box<[AtomicBool]>,
    /// Per slot: the authority holds it (broken, being repaired): nothing is sent for it,
    /// whatever the slot map says, until it is unblocked.
    blocked: Box<[AtomicBool]>,
    /// Per slot: a migration is open or remembered. Redirects for it are not followed
    /// blindly: the authority decides where it is served.
    watched: Box<[AtomicBool]>,
    wake: Notify,
    /// Bumped whenever the slot map or the blocked set changes.
    generation: AtomicU64,
    /// `hold.timeout` in milliseconds (reloadable).
    timeout_ms: AtomicU64,
    /// `hold.max_bytes` (reloadable).
    max_bytes: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Hold {
    pub fn new(timeout: Duration, max_bytes: usize, metrics: Arc<Metrics>) -> Hold {
        Hold {
            state: Mutex::new(State::default()),
            held: (0..crate::protocol::SLOTS)
                .map(|_| AtomicBool::new(false))
                .collect(),
            blocked: (0..crate::protocol::SLOTS)
                .map(|_| AtomicBool::new(false))
                .collect(),
            watched: (0..crate::protocol::SLOTS)
                .map(|_| AtomicBool::new(false))
                .collect(),
            wake: Notify::new(),
            generation: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
            max_bytes: AtomicUsize::new(max_bytes),
            metrics,
        }
    }

    /// Applies reloaded limits.
    pub fn set_limits(&self, timeout: Duration, max_bytes: usize) {
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Waiting requests per slot (`None`: keyless), with how long the oldest has waited.
    pub fn snapshot(&self, now: Instant) -> Vec<(Option<u16>, usize, Duration)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = |q: &Queue| {
            q.jobs
                .iter()
                .filter_map(|h| h.job.held_since)
                .min()
                .map_or(Duration::ZERO, |t| now.duration_since(t))
        };
        let mut out: Vec<_> = state
            .slots
            .iter()
            .filter(|(_, q)| !q.jobs.is_empty())
            .map(|(&s, q)| (Some(s), q.jobs.len(), oldest(q)))
            .collect();
        if let Some(q) = state.keyless.as_ref().filter(|q| !q.jobs.is_empty()) {
            out.push((None, q.jobs.len(), oldest(q)));
        }
        out.sort();
        out
    }

    /// True when requests for `slot` must queue behind waiting ones, or wait for a repair.
    #[inline]
    pub fn is_held(&self, slot: u16) -> bool {
        self.held[slot as usize].load(Ordering::Acquire)
            || self.blocked[slot as usize].load(Ordering::Acquire)
    }

    /// Makes exactly `slots` blocked; requests for a slot unblocked here are sent again.
    pub fn set_blocked(&self, slots: &std::collections::BTreeSet<u16>) {
        let mut changed = false;
        for (slot, flag) in self.blocked.iter().enumerate() {
            let want = slots.contains(&(slot as u16));
            if flag.swap(want, Ordering::AcqRel) != want {
                changed = true;
            }
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// Makes exactly `slots` watched.
    pub fn set_watched(&self, slots: &std::collections::BTreeSet<u16>) {
        for (slot, flag) in self.watched.iter().enumerate() {
            flag.store(slots.contains(&(slot as u16)), Ordering::Release);
        }
    }

    /// True when a migration of `slot` is open or remembered.
    #[inline]
    pub fn is_watched(&self, slot: u16) -> bool {
        self.watched[slot as usize].load(Ordering::Acquire)
    }

    /// Parks a job.
    pub fn push(&self, job: Job, reason: Reason) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.push_locked(&mut state, job, reason, Instant::now());
        drop(state);
        self.wake.notify_one();
    }

    fn push_locked(&self, state: &mut State, mut job: Job, reason: Reason, now: Instant) {
        let since = *job.held_since.get_or_insert(now);
        self.metrics.held_total.inc();
        let size = job.raw.len();
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        if state.bytes + size > max_bytes {
            let text = format!(
                "{} (hold queue full: {max_bytes} bytes)",
                reason.error(job.slot, now - since),
            );
            let _ = job.reply.send(reply::error(&text));
            return;
        }
        state.bytes += size;
        let generation = self.generation.load(Ordering::Acquire);
        let queue = match job.slot {
            Some(slot) => {
                self.held[slot as usize].store(true, Ordering::Release);
                state
                    .slots
                    .entry(slot)
                    .or_insert_with(|| Queue::new(now, generation))
            }
            None => state
                .keyless
                .get_or_insert_with(|| Queue::new(now, generation)),
        };
        if !matches!(reason, Reason::Queued | Reason::Repair) {
            // A failed attempt: back off, unless the queue already waits for a retry.
            if queue.retry_at <= now {
                queue.retry_at = now + backoff(queue.attempts);
                queue.attempts += 1;
            }
            queue.generation = generation;
        }
        queue.jobs.push_back(Held { job, reason });
    }

    /// Tells the queue a new slot map is out: every slot is worth trying again.
    pub fn map_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// True when the authority holds `slot` for a repair.
    #[inline]
    pub fn is_blocked(&self, slot: u16) -> bool {
        self.blocked[slot as usize].load(Ordering::Acquire)
    }

    /// Number of requests waiting now.
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.slots.values().map(|q| q.jobs.len()).sum::<usize>()
            + state.keyless.as_ref().map_or(0, |q| q.jobs.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something may be due, at most until `limit`.
    pub async fn wait(&self, limit: Duration) {
        let next = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state
                .slots
                .values()
                .chain(state.keyless.as_ref())
                .filter(|q| !q.jobs.is_empty())
                .map(|q| q.retry_at)
                .min()
        };
        let sleep = match next {
            Some(at) => at.saturating_duration_since(Instant::now()).min(limit),
            None => limit,
        };
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }

    /// Takes the queues that are due (backoff over, or the map changed since they failed)
    /// and hands their jobs, in order, to `send`; fails jobs past the deadline. `send`
    /// runs under the lock, so a request arriving meanwhile still queues behind them; it
    /// gives back a job it could not send, which waits again.
    pub fn release(&self, now: Instant, mut send: impl FnMut(Job) -> Result<(), (Job, Reason)>) {
        let generation = self.generation.load(Ordering::Acquire);
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        let due =
            |q: &Queue| !q.jobs.is_empty() && (q.retry_at <= now || q.generation < generation);
        let mut released: Vec<Held> = Vec::new();
        let mut cleared: Vec<u16> = Vec::new();
        for (&slot, q) in state.slots.iter_mut().filter(|(_, q)| due(q)) {
            if self.blocked[slot as usize].load(Ordering::Acquire) {
                // Still held for a repair: only requests past the deadline leave.
                let (late, waiting): (Vec<Held>, Vec<Held>) = q.jobs.drain(..).partition(|h| {
                    h.job
                        .held_since
                        .is_some_and(|t| now.duration_since(t) >= timeout)
                });
                q.jobs.extend(waiting);
                released.extend(late);
                q.retry_at = now + BACKOFF_MAX;
                continue;
            }
            released.extend(q.jobs.drain(..));
            cleared.push(slot);
        }
        if let Some(q) = state.keyless.as_mut().filter(|q| due(q)) {
            released.extend(q.jobs.drain(..));
        }
        for &slot in &cleared {
            self.held[slot as usize].store(false, Ordering::Release);
        }
        for held in released {
            state.bytes -= held.job.raw.len();
            let mut job = held.job;
            let waited = now.duration_since(job.held_since.unwrap_or(now));
            self.metrics.hold_wait.observe(waited.as_secs_f64());
            if waited >= timeout {
                self.metrics.hold_timeouts.inc();
                let _ = job
                    .reply
                    .send(reply::error(&held.reason.error(job.slot, waited)));
                continue;
            }
            job.hops = 0;
            if let Err((job, reason)) = send(job) {
                self.push_locked(state, job, reason, now);
            }
        }
        // An emptied queue is kept a while so that a slot failing again keeps backing off.
        let stale = |q: &Queue| q.jobs.is_empty() && q.retry_at + FORGET_AFTER < now;
        state.slots.retain(|_, q| !stale(q));
        if state.keyless.as_ref().is_some_and(stale) {
            state.keyless = None;
        }
    }
}

impl Queue {
    fn new(now: Instant, generation: u64) -> Queue {
        Queue {
            jobs: VecDeque::new(),
            retry_at: now,
            attempts: 0,
            generation,
        }
    }
}

fn backoff(attempts: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1 << attempts.min(8))
        .min(BACKOFF_MAX)
}
