//! The workloads and the history they record: every operation with its start, its end
//! and its outcome, as a client saw it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `SET key v` of a register.
    Write(u64),
    /// `GET key` of a register.
    Read,
    /// `INCR key`.
    Incr,
    /// `RPUSH key v`.
    Push(u64),
    /// `LRANGE key 0 -1`.
    Range,
    /// `MULTI; SET {k}a v; SET {k}b v; EXEC`.
    Txn(u64),
    /// `MGET {k}a {k}b`.
    ReadTxn,
}

/// What it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    Done,
    Value(Option<u64>),
    Int(i64),
    List(Vec<u64>),
    Pair(Option<u64>, Option<u64>),
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Ret),
    /// It did not take effect (a read answered an error).
    Failed(String),
    /// It may or may not have taken effect: a write answered an error, a connection lost
    /// with it in flight, no answer in time.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Op {
    /// The client that ran it (each runs one operation at a time).
    pub client: usize,
    pub key: String,
    pub call: Call,
    /// Seconds since the run began.
    pub start: f64,
    pub end: f64,
    pub outcome: Outcome,
    /// The error reached the client while the proxy was running (not killed by the
    /// nemesis): counted as a client error.
    pub blamed: bool,
}

impl Op {
    pub fn ok(&self) -> Option<&Ret> {
        match &self.outcome {
            Outcome::Ok(ret) => Some(ret),
            _ => None,
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown(_))
    }
}

/// What the workloads share with the nemesis.
pub struct Shared {
    pub url: String,
    pub t0: Instant,
    pub stop: AtomicBool,
    /// Bumped each time the nemesis kills the proxy: an operation that lost its connection
    /// across a bump is not the proxy's fault.
    pub proxy_epoch: AtomicU64,
    /// Set from just before the nemesis kills the proxy until it is back.
    pub proxy_down: AtomicBool,
    /// Each lane's current key generation, and operations on it so far (registers, then
    /// transaction pairs).
    pub lanes: Vec<(AtomicU64, AtomicUsize)>,
    /// Longest an operation may take before it counts as hung (above `hold.timeout`).
    pub op_limit: Duration,
}

impl Shared {
    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// The generation of lane `lane`'s key for the next operation: a new key every
    /// [`OPS_PER_KEY`] operations.
    fn next_key(&self, lane: usize) -> u64 {
        let (generation, count) = &self.lanes[lane];
        let now = generation.load(Ordering::SeqCst);
        if count.fetch_add(1, Ordering::SeqCst) + 1 >= OPS_PER_KEY {
            count.store(0, Ordering::SeqCst);
            generation.fetch_add(1, Ordering::SeqCst);
        }
        now
    }
}

/// Register lanes; each transaction pair is a lane after them.
pub const REGISTER_LANES: usize = 6;
/// Transaction pairs.
pub const PAIRS: usize = 4;

/// Operations on one register key (or transaction pair) before its lane moves to a new
/// key: keeps every key's history short enough for the linearizability search, whose
/// memory grows with it (Jepsen's independent keys).
const OPS_PER_KEY: usize = 250;
/// Appends to one list before its client moves to a new list.
const PUSHES_PER_LIST: u64 = 150;

/// A small deterministic generator (xorshift), seeded per client from the run's seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A client of the proxy that connects again when its connection is gone.
struct Client {
    shared: Arc<Shared>,
    conn: Option<redis::aio::MultiplexedConnection>,
    /// Gives up connecting once the workloads are told to stop (the final reads do not).
    stops: bool,
}

impl Client {
    fn new(shared: Arc<Shared>) -> Client {
        Client {
            shared,
            conn: None,
            stops: true,
        }
    }

    /// A connection, waiting for the proxy while it is down.
    async fn conn(&mut self) -> Option<&mut redis::aio::MultiplexedConnection> {
        let deadline = Instant::now() + self.shared.op_limit;
        while self.conn.is_none() {
            if (self.stops && self.shared.stop.load(Ordering::Relaxed)) || Instant::now() > deadline
            {
                return None;
            }
            let client = redis::Client::open(self.shared.url.as_str()).ok()?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(self.shared.op_limit);
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => self.conn = Some(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        self.conn.as_mut()
    }

    /// Runs `cmd` (a pipeline for a transaction) and records it.
    async fn run<T: redis::FromRedisValue>(
        &mut self,
        id: usize,
        key: &str,
        call: Call,
        query: impl FnOnce() -> redis::Pipeline,
        read: impl FnOnce(T) -> Option<Ret>,
    ) -> Option<Op> {
        let epoch = self.shared.proxy_epoch.load(Ordering::SeqCst);
        let start = self.shared.now();
        let pipe = query();
        let conn = self.conn().await?;
        let answer: redis::RedisResult<T> = pipe.query_async(conn).await;
        let end = self.shared.now();
        let proxy_killed = self.shared.proxy_epoch.load(Ordering::SeqCst) != epoch
            || self.shared.proxy_down.load(Ordering::SeqCst);
        let writes = !matches!(call, Call::Read | Call::Range | Call::ReadTxn);
        let (outcome, blamed) = match answer {
            Ok(value) => match read(value) {
                Some(ret) => (Outcome::Ok(ret), false),
                None => (
                    Outcome::Unknown("an answer of the wrong shape".into()),
                    true,
                ),
            },
            Err(e) if e.code().is_some() || e.kind() == redis::ErrorKind::ExecAbortError => {
                let text = e.to_string();
                let outcome = if writes {
                    Outcome::Unknown(text)
                } else {
                    Outcome::Failed(text)
                };
                (outcome, true)
            }
            Err(e) => {
                // The connection is gone, or no answer came in time.
                self.conn = None;
                (Outcome::Unknown(e.to_string()), !proxy_killed)
            }
        };
        Some(Op {
            client: id,
            key: key.to_string(),
            call,
            start,
            end,
            outcome,
            blamed,
        })
    }
}

impl Client {
    /// `GET key` of a register or a counter.
    async fn get(&mut self, id: usize, key: &str) -> Option<Op> {
        let query = || redis::pipe().cmd("GET").arg(key).clone();
        let read = |(v,): (Option<String>,)| value(v).map(Ret::Value);
        self.run(id, key, Call::Read, query, read).await
    }

    /// `LRANGE key 0 -1`.
    async fn range(&mut self, id: usize, key: &str) -> Option<Op> {
        let query = || redis::pipe().cmd("LRANGE").arg(key).arg(0).arg(-1).clone();
        let read = |(items,): (Vec<String>,)| {
            items
                .into_iter()
                .map(|s| s.parse().ok())
                .collect::<Option<Vec<u64>>>()
                .map(Ret::List)
        };
        self.run(id, key, Call::Range, query, read).await
    }

    /// `MGET {k}a {k}b` of a transaction's pair.
    async fn pair(&mut self, id: usize, key: &str) -> Option<Op> {
        let (a, b) = (format!("{key}a"), format!("{key}b"));
        let query = || redis::pipe().cmd("MGET").arg(&a).arg(&b).clone();
        let read =
            |((x, y),): ((Option<String>, Option<String>),)| Some(Ret::Pair(value(x)?, value(y)?));
        self.run(id, key, Call::ReadTxn, query, read).await
    }
}

fn value(v: Option<String>) -> Option<Option<u64>> {
    match v {
        None => Some(None),
        Some(s) => s.parse().ok().map(Some),
    }
}

/// A unique value of client `id`: its number in the high bits.
fn unique(id: usize, seq: u64) -> u64 {
    ((id as u64) << 40) | seq
}

/// Register client `id`: reads and writes unique values on the lanes' keys until told to
/// stop. Several clients share each key.
pub async fn registers(shared: Arc<Shared>, id: usize, mut rng: Rng) -> Vec<Op> {
    let mut client = Client::new(shared.clone());
    let mut ops = Vec::new();
    let mut seq = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let lane = rng.below(REGISTER_LANES as u64) as usize;
        let key = format!("nem:reg:{lane}:{}", shared.next_key(lane));
        let op = if rng.below(2) == 0 {
            seq += 1;
            let v = unique(id, seq);
            client
                .run(
                    id,
                    &key,
                    Call::Write(v),
                    || redis::pipe().cmd("SET").arg(&key).arg(v).clone(),
                    |(): ()| Some(Ret::Done),
                )
                .await
        } else {
            client.get(id, &key).await
        };
        ops.extend(op);
    }
    ops
}

/// Counter client `id`: INCR of a counter of its own.
pub async fn counter(shared: Arc<Shared>, id: usize) -> Vec<Op> {
    let mut client = Client::new(shared.clone());
    let key = format!("nem:counter:{id}");
    let mut ops = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let op = client
            .run(
                id,
                &key,
                Call::Incr,
                || redis::pipe().cmd("INCR").arg(&key).clone(),
                |(n,): (i64,)| Some(Ret::Int(n)),
            )
            .await;
        ops.extend(op);
    }
    ops
}

/// List client `id`: appends unique elements to a list of its own and reads it whole
/// now and then; moves to a new list every [`PUSHES_PER_LIST`] appends. Half its reads
/// are of one of its earlier lists, picked at random: a list that loses appends after
/// the client moved on is then caught near when it happened, not only by the final read
/// (seed 213's second run lost the tails of 16 lists no read looked at again).
pub async fn lists(shared: Arc<Shared>, id: usize, mut rng: Rng) -> Vec<Op> {
    let mut client = Client::new(shared.clone());
    let mut ops = Vec::new();
    let mut seq = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let list = seq / PUSHES_PER_LIST;
        let key = format!("nem:list:{id}:{list}");
        let op = if rng.below(8) == 0 {
            let key = match rng.below(2) {
                0 => format!("nem:list:{id}:{}", rng.below(list + 1)),
                _ => key,
            };
            client.range(id, &key).await
        } else {
            seq += 1;
            let v = unique(id, seq);
            client
                .run(
                    id,
                    &key,
                    Call::Push(v),
                    || redis::pipe().cmd("RPUSH").arg(&key).arg(v).clone(),
                    |(_,): (i64,)| Some(Ret::Done),
                )
                .await
        };
        ops.extend(op);
    }
    ops
}

/// Transaction client `id`: on a few pairs of keys of one slot each, writes both in one
/// MULTI/EXEC with one unique value, or reads both.
pub async fn transactions(shared: Arc<Shared>, id: usize, pairs: usize, mut rng: Rng) -> Vec<Op> {
    let mut client = Client::new(shared.clone());
    let mut ops = Vec::new();
    let mut seq = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let pair = rng.below(pairs as u64) as usize;
        let key = format!(
            "nem:txn:{{t{pair}:{}}}",
            shared.next_key(pair + REGISTER_LANES)
        );
        let (a, b) = (format!("{key}a"), format!("{key}b"));
        let op = if rng.below(2) == 0 {
            seq += 1;
            let v = unique(id, seq);
            client
                .run(
                    id,
                    &key,
                    Call::Txn(v),
                    || {
                        redis::pipe()
                            .atomic()
                            .cmd("SET")
                            .arg(&a)
                            .arg(v)
                            .cmd("SET")
                            .arg(&b)
                            .arg(v)
                            .clone()
                    },
                    |((), ()): ((), ())| Some(Ret::Done),
                )
                .await
        } else {
            client.pair(id, &key).await
        };
        ops.extend(op);
    }
    ops
}

/// The last reads, once the cluster is healthy and the writers stopped: every key's
/// final state, recorded like any other operation. They take [`FINAL_READS_LIMIT`] at
/// most: returns the reads and how many keys were left unread (slots the proxy never
/// stopped holding, as when etcd refused every write: the run fails, it does not hang).
pub async fn final_reads(shared: Arc<Shared>, history: &[Op]) -> (Vec<Op>, usize) {
    let mut client = Client::new(shared.clone());
    client.stops = false;
    let mut keys: Vec<(&str, &Call)> = history.iter().map(|o| (o.key.as_str(), &o.call)).collect();
    keys.sort_by_key(|(k, _)| *k);
    keys.dedup_by_key(|(k, _)| *k);
    let mut ops = Vec::new();
    let deadline = Instant::now() + FINAL_READS_LIMIT;
    let total = keys.len();
    for (done, (key, call)) in keys.into_iter().enumerate() {
        if Instant::now() > deadline {
            return (ops, total - done);
        }
        let op = match call {
            Call::Write(_) | Call::Read | Call::Incr => client.get(usize::MAX, key).await,
            Call::Push(_) | Call::Range => client.range(usize::MAX, key).await,
            Call::Txn(_) | Call::ReadTxn => client.pair(usize::MAX, key).await,
        };
        ops.extend(op);
    }
    (ops, 0)
}

/// The longest the last reads may take: tens of thousands of keys, each read in about a
/// millisecond once the cluster healed.
const FINAL_READS_LIMIT: Duration = Duration::from_secs(600);
