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

use super::backend::job::Job;
use super::redirect::Reason;
use crate::metrics::Metrics;
use crate::protocol::reply;
use crate::routing::Routing;

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
    /// Where the authority's per-slot flags are: a *blocked* slot is held for a repair.
    routing: Arc<Routing>,
    wake: Notify,
    /// Bumped whenever the slot map or the blocked set changes (`map_changed`).
    generation: AtomicU64,
    /// `hold.timeout` in milliseconds (reloadable).
    timeout_ms: AtomicU64,
    /// `hold.max_bytes` (reloadable).
    max_bytes: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Hold {
    pub fn new(
        timeout: Duration,
        max_bytes: usize,
        routing: Arc<Routing>,
        metrics: Arc<Metrics>,
    ) -> Hold {
        Hold {
            state: Mutex::new(State::default()),
            held: (0..crate::protocol::SLOTS)
                .map(|_| AtomicBool::new(false))
                .collect(),
            routing,
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
        self.held[slot as usize].load(Ordering::Acquire) || self.routing.is_blocked(slot)
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

    /// Tells the queue a new slot map or blocked set is out: every slot is worth trying
    /// again.
    pub fn map_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
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
            if self.routing.is_blocked(slot) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use bytes::Bytes;
    use std::collections::BTreeSet;
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn hold(max_bytes: usize) -> (Hold, Arc<Routing>) {
        let (routing, _hints) = Routing::new(Config::default());
        let hold = Hold::new(TIMEOUT, max_bytes, routing.clone(), routing.metrics.clone());
        (hold, routing)
    }

    /// A job for `slot` that started waiting at `since`.
    fn job(slot: u16, body: &'static [u8], since: Instant) -> (Job, oneshot::Receiver<Bytes>) {
        let (mut job, rx) = Job::new(Bytes::from_static(body), Some(slot), 1, false);
        job.held_since = Some(since);
        (job, rx)
    }

    /// Releases at `now`, sending everything; what was sent, in order.
    fn release_all(hold: &Hold, now: Instant) -> Vec<Bytes> {
        let mut sent = Vec::new();
        hold.release(now, |job| {
            sent.push(job.raw.clone());
            Ok(())
        });
        sent
    }

    #[test]
    fn backoff_doubles_from_5_ms_to_200_ms() {
        let steps: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(steps, [5, 10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    fn a_parked_slot_waits_for_its_backoff_and_keeps_its_order() {
        let (hold, _routing) = hold(1 << 20);
        let t0 = Instant::now();
        let (a, _ra) = job(7, b"first", t0);
        let (b, _rb) = job(7, b"second", t0);
        hold.push(a, Reason::NoOwner);
        hold.push(b, Reason::Queued);
        assert!(hold.is_held(7), "later requests queue behind");
        assert!(!hold.is_held(8));
        assert!(release_all(&hold, t0).is_empty(), "backing off");
        let sent = release_all(&hold, t0 + Duration::from_millis(50));
        assert_eq!(sent, ["first", "second"]);
        assert!(!hold.is_held(7));
        assert!(hold.is_empty());
    }

    #[test]
    fn a_new_map_makes_a_waiting_slot_due_at_once() {
        let (hold, _routing) = hold(1 << 20);
        let t0 = Instant::now();
        let (a, _ra) = job(7, b"a", t0);
        hold.push(a, Reason::NoOwner);
        assert!(release_all(&hold, t0).is_empty());
        hold.map_changed();
        assert_eq!(release_all(&hold, t0), ["a"]);
    }

    #[test]
    fn a_job_that_cannot_be_sent_waits_again_with_a_longer_backoff() {
        let (hold, _routing) = hold(1 << 20);
        let t0 = Instant::now();
        let (a, _ra) = job(7, b"a", t0);
        hold.push(a, Reason::NoOwner);
        let at = t0 + Duration::from_millis(50);
        hold.release(at, |job| Err((job, Reason::NoOwner)));
        assert!(hold.is_held(7));
        // Failed twice: 10 ms this time, counted from the failed attempt.
        assert!(release_all(&hold, at + Duration::from_millis(5)).is_empty());
        assert_eq!(release_all(&hold, at + Duration::from_millis(11)), ["a"]);
    }

    #[test]
    fn past_the_timeout_the_client_gets_an_error_naming_slot_and_reason() {
        let (hold, routing) = hold(1 << 20);
        let t0 = Instant::now();
        let (a, mut ra) = job(7, b"a", t0);
        hold.push(a, Reason::Unreachable("10.0.0.1:7000: refused".into()));
        assert!(release_all(&hold, t0 + TIMEOUT).is_empty(), "not sent");
        let error = ra.try_recv().expect("answered");
        assert_eq!(
            &error[..],
            b"-CLUSTERDOWN slot 7 has no reachable owner (held 2.0s): 10.0.0.1:7000: refused\r\n"
        );
        assert_eq!(routing.metrics.hold_timeouts.get(), 1);
    }

    #[test]
    fn a_blocked_slot_keeps_its_requests_until_unblocked_or_late() {
        let (hold, routing) = hold(1 << 20);
        routing.set_blocked(&BTreeSet::from([7]));
        let t0 = Instant::now();
        let (early, mut r_early) = job(7, b"early", t0);
        let (late, mut r_late) = job(7, b"late", t0 - TIMEOUT);
        hold.push(late, Reason::Repair);
        hold.push(early, Reason::Repair);
        hold.map_changed();
        assert!(release_all(&hold, t0).is_empty(), "held for the repair");
        assert!(r_late
            .try_recv()
            .unwrap()
            .starts_with(b"-TRYAGAIN slot 7 has no owner: repair in progress"));
        assert!(r_early.try_recv().is_err(), "still waiting");
        routing.set_blocked(&BTreeSet::new());
        hold.map_changed();
        assert_eq!(release_all(&hold, t0), ["early"]);
    }

    #[test]
    fn past_max_bytes_a_request_fails_at_once() {
        let (hold, _routing) = hold(8);
        let t0 = Instant::now();
        let (a, mut ra) = job(1, b"12345", t0);
        let (b, mut rb) = job(2, b"67890", t0);
        hold.push(a, Reason::NoOwner);
        hold.push(b, Reason::NoOwner);
        assert!(ra.try_recv().is_err(), "the first fits");
        let error = rb.try_recv().expect("the second is refused");
        assert!(
            String::from_utf8_lossy(&error).contains("hold queue full: 8 bytes"),
            "{error:?}"
        );
        assert_eq!(hold.len(), 1);
    }
}
