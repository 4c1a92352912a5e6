//! Prometheus metrics. Every child of a labelled family is looked up once, here, so the
//! request path only touches ready counters and histograms.

use std::time::Instant;

use prometheus::local::LocalHistogram;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What kind of request, for the request counters and latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A read of one slot.
    Read,
    /// A write to one slot.
    Write,
    /// A multi-key command split by slot (MGET, MSET, DEL, ...).
    MultiKey,
    /// Sent to every master (DBSIZE, KEYS, SCAN, ...).
    Cluster,
    /// Answered by the proxy itself.
    Local,
    /// Anything else: keyless commands, unknown commands, refusals.
    Other,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Read,
        Class::Write,
        Class::MultiKey,
        Class::Cluster,
        Class::Local,
        Class::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::MultiKey => "multikey",
            Class::Cluster => "cluster",
            Class::Local => "local",
            Class::Other => "other",
        }
    }
}

/// Error codes counted by name; any other code counts as `other`.
const ERROR_CODES: [&str; 13] = [
    "ERR",
    "WRONGTYPE",
    "CROSSSLOT",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOAUTH",
    "WRONGPASS",
    "NOSCRIPT",
    "BUSY",
    "OOM",
    "NOPROTO",
    "EXECABORT",
    "other",
];

/// How an absorbed redirect came.
#[derive(Clone, Copy, Debug)]
pub enum RedirectKind {
    Moved,
    Ask,
    TryAgain,
    ClusterDown,
    /// LOADING, MASTERDOWN, READONLY.
    NotReady,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: Vec<IntCounter>,
    latency: Vec<Histogram>,
    errors: Vec<IntCounter>,
    redirects: Vec<IntCounter>,
    backend_latency: HistogramVec,
    pub client_connections: IntGauge,
    /// Clients waiting in a blocking command or WAIT (`blocked_clients` in INFO).
    pub clients_blocked: IntGauge,
    pub client_connections_total: IntCounter,
    pub clients_refused: IntCounter,
    pub backend_connections: IntGauge,
    pub backend_dedicated_connections: IntGauge,
    pub backend_connects_ok: IntCounter,
    pub backend_connects_failed: IntCounter,
    pub backend_inflight: IntGauge,
    pub refreshes_ok: IntCounter,
    pub refreshes_failed: IntCounter,
    pub slots: IntGaugeVec,
    pub held_now: IntGauge,
    pub held_total: IntCounter,
    pub hold_wait: Histogram,
    pub hold_timeouts: IntCounter,
    pub repairs: IntCounterVec,
    pub migrations: IntCounterVec,
    pub reloads: IntCounterVec,
    /// `durability.ack = "replicated"`: WAITs asked again because they came back short.
    pub wait_retries: IntCounter,
    /// Writes answered an error: applied on a master, not confirmed by its replicas.
    pub writes_unconfirmed: IntCounter,
    /// `WAIT`s whose every fence a master refused (`durability.ack = "replicated"`).
    pub fences_refused: IntCounter,
    /// Writes not sent again after their connection broke, since they could apply twice.
    pub writes_not_retried: IntCounter,
    /// Redirects to an address that is not a node of the cluster, not followed.
    pub redirects_outside: IntCounter,
    /// Clients disconnected for leaving more than `client.output_buffer_limit.normal`
    /// unread.
    pub clients_over_output_limit: IntCounter,
    /// Subscribers disconnected past `client.output_buffer_limit.pubsub`.
    pub subscribers_over_output_limit: IntCounter,
    /// Clients whose replies wait for them to read; none of their requests is read
    /// meanwhile.
    pub clients_held: IntGauge,
    /// Repair steps this proxy sent to nodes.
    pub repair_steps: IntCounter,
    /// 1 while this proxy is the authority that repairs and moves slots.
    pub authority: IntGauge,
    /// Replicas the proxy keeps from winning a failover (`durability.promote`).
    pub replicas_kept_from_failover: IntGauge,
    /// How long whoever holds the authority's lease has held it.
    pub authority_lease_age: IntGauge,
    /// 1 for where the journal is kept (`etcd`, `file` or `memory`).
    pub journal_source: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        // Every metric is registered as it is made: a metric made is a metric exported.
        let registry = Registry::new();
        let r = &registry;
        let requests_vec = registered(
            r,
            IntCounterVec::new(
                Opts::new(
                    "slotguard_requests_total",
                    "Requests received, by command class",
                ),
                &["class"],
            )
            .expect("valid metric"),
        );
        let latency_vec = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "slotguard_request_duration_seconds",
                    "Time from a request's arrival to its reply being ready, by command class",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["class"],
            )
            .expect("valid metric"),
        );
        let errors_vec = registered(
            r,
            IntCounterVec::new(
                Opts::new(
                    "slotguard_client_errors_total",
                    "Error replies sent to clients, by error code",
                ),
                &["code"],
            )
            .expect("valid metric"),
        );
        let redirects_vec = registered(
            r,
            IntCounterVec::new(
                Opts::new(
                    "slotguard_redirects_absorbed_total",
                    "Cluster redirects and refusals the proxy handled instead of the client",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let backend_latency = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "slotguard_backend_duration_seconds",
                    "Time from a request's write to a node until its reply, by node",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["node"],
            )
            .expect("valid metric"),
        );
        let gauge = |name: &str, help: &str| {
            registered(r, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            registered(r, IntCounter::new(name, help).expect("valid metric"))
        };
        let connects = registered(
            r,
            IntCounterVec::new(
                Opts::new(
                    "slotguard_backend_connects_total",
                    "Connection attempts to nodes, by result",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let refreshes = registered(
            r,
            IntCounterVec::new(
                Opts::new(
                    "slotguard_topology_refreshes_total",
                    "Slot map refreshes, by result",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let slots = registered(
            r,
            IntGaugeVec::new(
                Opts::new("slotguard_slots", "Hash slots by state"),
                &["state"],
            )
            .expect("valid metric"),
        );
        let outcome = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["outcome"]).expect("valid metric");
            let v = registered(r, v);
            for o in ["ok", "failed"] {
                v.with_label_values(&[o]);
            }
            v
        };
        let metrics = Metrics {
            requests: Class::ALL
                .iter()
                .map(|c| requests_vec.with_label_values(&[c.name()]))
                .collect(),
            latency: Class::ALL
                .iter()
                .map(|c| latency_vec.with_label_values(&[c.name()]))
                .collect(),
            errors: ERROR_CODES
                .iter()
                .map(|c| errors_vec.with_label_values(&[c]))
                .collect(),
            redirects: ["moved", "ask", "tryagain", "clusterdown", "notready"]
                .iter()
                .map(|k| redirects_vec.with_label_values(&[k]))
                .collect(),
            backend_latency,
            client_connections: gauge("slotguard_client_connections", "Clients connected now"),
            clients_blocked: gauge(
                "slotguard_clients_blocked",
                "Clients waiting in a blocking command or WAIT",
            ),
            client_connections_total: counter(
                "slotguard_client_connections_total",
                "Client connections accepted",
            ),
            clients_refused: counter(
                "slotguard_clients_refused_total",
                "Client connections refused at client.max_clients",
            ),
            backend_connections: gauge(
                "slotguard_backend_connections",
                "Connections to cluster nodes open now",
            ),
            backend_dedicated_connections: gauge(
                "slotguard_backend_dedicated_connections",
                "Connections to cluster nodes held by one client (blocking commands, WATCH, subscriptions)",
            ),
            backend_connects_ok: connects.with_label_values(&["ok"]),
            backend_connects_failed: connects.with_label_values(&["failed"]),
            backend_inflight: gauge(
                "slotguard_backend_inflight_requests",
                "Requests written to nodes and not answered yet",
            ),
            refreshes_ok: refreshes.with_label_values(&["ok"]),
            refreshes_failed: refreshes.with_label_values(&["failed"]),
            slots,
            held_now: gauge(
                "slotguard_held_requests",
                "Requests waiting in the hold queue now",
            ),
            held_total: counter(
                "slotguard_held_requests_total",
                "Requests parked in the hold queue, retries included",
            ),
            hold_wait: registered(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "slotguard_hold_wait_seconds",
                        "How long a held request waited before it was sent again or failed",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            hold_timeouts: counter(
                "slotguard_hold_timeouts_total",
                "Held requests answered with an error at hold.timeout",
            ),
            repairs: outcome("slotguard_repairs_total", "Slot repairs run, by outcome"),
            migrations: outcome(
                "slotguard_migrations_total",
                "Slot migrations run, by outcome",
            ),
            reloads: outcome(
                "slotguard_config_reloads_total",
                "Configuration reloads, by outcome",
            ),
            replicas_kept_from_failover: gauge(
                "slotguard_replicas_kept_from_failover",
                "Replicas not synced with their master since they started or changed masters, kept from winning a failover (durability.promote = synced)",
            ),
            wait_retries: counter(
                "slotguard_wait_retries_total",
                "WAITs for replicas asked again after a short answer (durability.ack = replicated)",
            ),
            writes_unconfirmed: counter(
                "slotguard_writes_unconfirmed_total",
                "Writes applied on a master but not confirmed by its replicas, answered an error",
            ),
            fences_refused: counter(
                "slotguard_fences_refused_total",
                "WAITs whose every fence write a master refused (their slots mid-move), so that the WAIT covered only the connection's own writes (durability.ack = replicated)",
            ),
            writes_not_retried: counter(
                "slotguard_writes_not_retried_total",
                "Writes in flight on a connection that broke, answered an error rather than sent twice",
            ),
            redirects_outside: counter(
                "slotguard_redirects_outside_total",
                "MOVED or ASK replies naming an address that is not a node of the cluster, not followed",
            ),
            clients_over_output_limit: counter(
                "slotguard_clients_over_output_limit_total",
                "Clients disconnected for leaving more of their replies unread than client.output_buffer_limit.normal",
            ),
            subscribers_over_output_limit: counter(
                "slotguard_subscribers_over_output_limit_total",
                "Subscribers disconnected for leaving more messages unread than client.output_buffer_limit.pubsub",
            ),
            clients_held: gauge(
                "slotguard_clients_held",
                "Clients whose replies wait for them to read; none of their requests is read meanwhile",
            ),
            repair_steps: counter(
                "slotguard_repair_steps_total",
                "Repair steps this proxy sent to the cluster's nodes",
            ),
            authority: gauge(
                "slotguard_authority",
                "1 while this proxy is the authority that repairs and moves slots (always, without [coordination])",
            ),
            authority_lease_age: gauge(
                "slotguard_authority_lease_age_seconds",
                "How long the authority's etcd lease has been held, by whichever proxy holds it",
            ),
            journal_source: registered(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "slotguard_journal_source",
                        "1 for where the journal is kept: etcd, file or memory",
                    ),
                    &["source"],
                )
                .expect("valid metric"),
            ),
            registry: Registry::new(),
        };
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts for one session, added to these a run at a time.
    pub fn local_requests(&self) -> LocalRequests {
        LocalRequests {
            requests: self.requests.clone(),
            latency: self.latency.iter().map(Runs::new).collect(),
        }
    }

    /// Requests received so far, all classes.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(IntCounter::get).sum()
    }

    /// Counts an error reply by its code (the reply's first word).
    pub fn client_error(&self, reply: &[u8]) {
        let text = reply.get(1..).unwrap_or_default();
        let code = text
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or_default();
        let i = ERROR_CODES
            .iter()
            .position(|c| c.as_bytes() == code)
            .unwrap_or(ERROR_CODES.len() - 1);
        self.errors[i].inc();
    }

    pub fn redirect(&self, kind: RedirectKind) {
        self.redirects[kind as usize].inc();
    }

    /// Redirects absorbed so far, all kinds.
    pub fn redirects_total(&self) -> u64 {
        self.redirects.iter().map(IntCounter::get).sum()
    }

    /// The backend latency histogram of one node (looked up once per node).
    pub fn node_latency(&self, node: &str) -> Histogram {
        self.backend_latency.with_label_values(&[node])
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers `metric` and gives it back.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// How long requests took, as of one reading of the clock. Requests read (or written)
/// together share their start, so the replies to a pipeline are timed with one
/// subtraction.
pub struct Took {
    now: Instant,
    since: Option<Instant>,
    seconds: f64,
}

impl Took {
    pub fn now() -> Took {
        Took {
            now: Instant::now(),
            since: None,
            seconds: 0.0,
        }
    }

    /// Seconds from `since` to now.
    pub fn of(&mut self, since: Instant) -> f64 {
        if self.since != Some(since) {
            self.since = Some(since);
            self.seconds = self.now.saturating_duration_since(since).as_secs_f64();
        }
        self.seconds
    }
}

/// A session's request counts and latencies. The replies written together to a pipeline
/// share their class and timing: such a run is counted in one step, through a local
/// histogram added to the shared one at once, instead of five atomic read-modify-writes a
/// request (a third of all a request made at -P 16, each costing many times a plain
/// instruction). A run of one is counted straight into the shared metrics, as cheap as
/// before.
pub struct LocalRequests {
    requests: Vec<IntCounter>,
    latency: Vec<Runs>,
}

impl LocalRequests {
    /// Counts one request of `class` that took `seconds`.
    pub fn request(&mut self, class: Class, seconds: f64) {
        let i = class as usize;
        let settled = self.latency[i].observe(seconds);
        count(&self.requests[i], settled);
    }

    /// Adds what was counted to the shared metrics.
    pub fn flush(&mut self) {
        for (latency, requests) in self.latency.iter_mut().zip(&self.requests) {
            count(requests, latency.settle());
        }
    }
}

/// Adds `n` to `counter`, without an atomic operation for none.
fn count(counter: &IntCounter, n: u64) {
    if n > 0 {
        counter.inc_by(n);
    }
}

impl Drop for LocalRequests {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Observations into one histogram, a run of equal values at a time (see
/// [`LocalRequests`]; a node connection's replies to one write share their timing too).
pub struct Runs {
    shared: Histogram,
    local: LocalHistogram,
    /// The value of the run being counted, and its length.
    run: Option<(f64, u64)>,
}

impl Runs {
    pub fn new(shared: &Histogram) -> Runs {
        Runs {
            shared: shared.clone(),
            local: shared.local(),
            run: None,
        }
    }

    /// Observes `v`: it lengthens the run, or ends it and starts one. How many the ended
    /// run added to the shared histogram (0 when none ended).
    pub fn observe(&mut self, v: f64) -> u64 {
        match &mut self.run {
            Some((value, n)) if *value == v => {
                *n += 1;
                0
            }
            _ => {
                let settled = self.settle();
                self.run = Some((v, 1));
                settled
            }
        }
    }

    /// Adds the run to the shared histogram; how many it counted.
    pub fn settle(&mut self) -> u64 {
        match self.run.take() {
            None => 0,
            Some((v, 1)) => {
                self.shared.observe(v);
                1
            }
            Some((v, n)) => {
                (0..n).for_each(|_| self.local.observe(v));
                self.local.flush();
                n
            }
        }
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        self.settle();
    }
}
