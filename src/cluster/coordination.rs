//! Several proxies in front of one cluster, one authority: the journal in etcd, and a
//! lease that makes one proxy at a time the one that repairs and moves slots.
//!
//! - **The lease.** Every proxy asks etcd for a lease of `lease_ttl` and tries to create
//!   the key `<prefix>authority` bound to it, only if no such key exists. The one that
//!   created it is the authority while it renews the lease (every third of the TTL). When
//!   it dies or is cut off from etcd, the lease runs out, etcd deletes the key, and the
//!   next proxy that tries creates it. A proxy counts itself the authority only until
//!   three quarters of the TTL after it last sent a renewal that etcd confirmed: it stops
//!   before etcd could give the key to another.
//! - **The fence.** Each repair step is written to the journal, before it is sent, in a
//!   transaction that succeeds only while `<prefix>authority` is still the key this proxy
//!   created (its create revision): a proxy that lost the lease, even one that does not
//!   know it yet, sends no further step.
//! - **The journal.** One JSON document under `<prefix>journal`. Every proxy applies its
//!   changes ([`Change`]) to it in a compare-and-swap on its revision, retried on a race,
//!   so nothing one proxy wrote is lost to another's write, and reads it back before it
//!   decides anything: a migration seen by one proxy is known to all. Forgetting a
//!   settled slot and the repair's own records are fenced: only the authority writes
//!   them.
//! - **etcd down.** Requests keep flowing: nothing on the request path asks etcd. Broken
//!   slots are held and reported as always; nobody repairs them, since nobody can renew
//!   the lease, until etcd answers again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, TlsOptions, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use super::error::Refused;
use super::journal::{lock, Change, Fence, Journal, Memory};
use crate::config::Coordination;
use crate::routing::status::Authority;
use crate::routing::Routing;

/// How long one request to etcd may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before trying etcd again after it failed.
const RETRY: Duration = Duration::from_millis(500);
/// Most compare-and-swap rounds lost to other proxies' writes before giving up.
const CAS_ROUNDS: usize = 20;
/// Every this many journal writes, etcd's history is compacted, keeping the last
/// [`HISTORY_KEPT`] revisions. etcd keeps every revision of every key until someone
/// compacts it: the journal is rewritten whole at each change, and a nemesis run filled
/// etcd's 2 GiB space quota in 18 minutes, after which etcd refuses every write and
/// nothing was repaired any more (Kubernetes' API server compacts etcd the same way).
const COMPACT_EVERY: u64 = 100;
/// Revisions of history a compaction keeps (watchers further behind must reread).
const HISTORY_KEPT: i64 = 1000;

/// What `<prefix>authority` holds: who, and since when.
#[derive(Serialize, Deserialize)]
struct Holder {
    name: String,
    /// Seconds since the Unix epoch.
    since: u64,
}

/// This proxy's hold on the authority.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// The create revision of `<prefix>authority`: the fence.
    revision: i64,
    /// Until when this proxy counts itself the authority without a further renewal.
    valid_until: Instant,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    held: Option<Held>,
    /// The holder as last read, and since when it holds it.
    holder: Option<(String, u64)>,
    /// etcd's last error, until it answers again.
    error: Option<String>,
    /// Journal writes of this proxy, to compact etcd's history every [`COMPACT_EVERY`].
    writes: u64,
}

/// The shared journal's fenced writes go to etcd.
impl Fence for Coordinator {
    fn commit_fenced(
        &self,
        changes: Vec<Change>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refused>> + Send + '_>> {
        Box::pin(Coordinator::commit_fenced(self, changes))
    }
}

/// A proxy's link to etcd.
pub struct Coordinator {
    config: Coordination,
    state: Mutex<State>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("endpoints", &self.config.endpoints)
            .field("name", &self.config.name)
            .finish()
    }
}

impl From<etcd_client::Error> for Refused {
    fn from(e: etcd_client::Error) -> Self {
        // etcd says "database space exceeded" with gRPC's RESOURCE_EXHAUSTED (8).
        const RESOURCE_EXHAUSTED: i32 = 8;
        match &e {
            etcd_client::Error::GRpcStatus(s) if s.code() as i32 == RESOURCE_EXHAUSTED => {
                Refused::Full(e.to_string())
            }
            _ => Refused::Etcd(e.to_string()),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Coordinator {
    pub fn new(config: Coordination) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            config,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    /// True while this proxy may repair and move slots.
    pub fn is_authority(&self) -> bool {
        self.fence().is_some()
    }

    /// The fence of the authority's lease, while this proxy holds it.
    fn fence(&self) -> Option<i64> {
        let held = self.state().held?;
        (Instant::now() < held.valid_until).then_some(held.revision)
    }

    /// Who repairs and moves slots, for `/status` and the metrics.
    pub fn authority(&self) -> Authority {
        let this_proxy = self.is_authority();
        let state = self.state();
        Authority {
            journal: "etcd",
            this_proxy,
            holder: state.holder.as_ref().map(|(name, _)| name.clone()),
            lease_age_seconds: state
                .holder
                .as_ref()
                .map(|(_, since)| unix_now().saturating_sub(*since)),
            etcd_error: state.error.clone(),
        }
    }

    /// A client to etcd, connecting first if there is none.
    async fn client(&self) -> Result<Client, Refused> {
        if let Some(client) = self.state().client.clone() {
            return Ok(client);
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if let Some((user, password)) = &self.config.user {
            options = options.with_user(user, password);
        }
        if let Some(tls) = self.tls()? {
            options = options.with_tls(tls);
        }
        let client = Client::connect(&self.config.endpoints, Some(options)).await?;
        self.state().client = Some(client.clone());
        Ok(client)
    }

    fn tls(&self) -> Result<Option<TlsOptions>, Refused> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Refused::Etcd(format!("{}: {e}", path.display())))
        };
        let mut tls = match &self.config.tls_ca {
            Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?)),
            None if self.config.endpoints.iter().any(|e| e.starts_with("https")) => {
                TlsOptions::new()
            }
            None => return Ok(None),
        };
        if let Some((cert, key)) = &self.config.tls_identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }

    /// etcd failed: noted for `/status`, and the client is dropped so that the next
    /// request connects anew.
    fn failed(&self, e: &Refused) {
        let mut state = self.state();
        let text = match e {
            Refused::NotAuthority => return,
            Refused::Etcd(text) | Refused::Full(text) => text,
        };
        if state.error.is_none() {
            match e {
                Refused::Full(_) => {
                    warn!(error = %text, "etcd refuses writes: its database is full (its space quota); nothing is repaired until it takes writes again: compact and defragment it, then `etcdctl alarm disarm`")
                }
                _ => {
                    warn!(error = %text, "etcd does not answer: nothing is repaired until it does")
                }
            }
        }
        state.error = Some(text.clone());
        state.client = None;
    }

    fn answered(&self) {
        let mut state = self.state();
        if state.error.take().is_some() {
            info!("etcd answers again");
        }
    }

    /// Holds the authority's lease whenever it is free, and renews it while this proxy
    /// runs; publishes who holds it. Runs until the process ends.
    pub async fn run(self: Arc<Self>, routing: Arc<Routing>) {
        loop {
            if let Err(e) = self.campaign(&routing).await {
                self.failed(&e);
            }
            if self.state().held.take().is_some() {
                warn!("this proxy lost the authority's lease: it repairs nothing until it holds it again");
            }
            routing.publish_authority(self.authority());
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One lease: granted, then renewed and offered for the authority's key until etcd
    /// fails or the lease is gone.
    async fn campaign(&self, routing: &Routing) -> Result<(), Refused> {
        let mut client = self.client().await?;
        let ttl = self.config.lease_ttl;
        let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
        let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await?;
        self.answered();
        let every = ttl / 3;
        loop {
            let sent = Instant::now();
            keeper.keep_alive().await?;
            let renewed = tokio::time::timeout(REQUEST_TIMEOUT, renewals.message()).await;
            match renewed {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(_)) => return Err(Refused::Etcd("the lease ran out".into())),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(Refused::Etcd("a lease renewal timed out".into())),
            }
            let valid_until = sent + ttl * 3 / 4;
            self.offer(&mut client, lease, valid_until).await?;
            routing.publish_authority(self.authority());
            tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
        }
    }

    /// Creates the authority's key with `lease` if no proxy holds it; notes who does.
    async fn offer(
        &self,
        client: &mut Client,
        lease: i64,
        valid_until: Instant,
    ) -> Result<(), Refused> {
        let key = self.key("authority");
        let held = self.state().held;
        if let Some(held) = held {
            self.state().held = Some(Held {
                valid_until,
                ..held
            });
            return Ok(());
        }
        let me = Holder {
            name: self.config.name.clone(),
            since: unix_now(),
        };
        let value = serde_json::to_vec(&me).expect("serializable");
        let put = etcd_client::PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, Some(put))])
            .or_else([TxnOp::get(key, None)]);
        let response = client.txn(txn).await?;
        let mut state = self.state();
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            info!(name = %me.name, "this proxy holds the authority's lease: it repairs and moves slots");
            state.held = Some(Held {
                revision,
                valid_until,
            });
            state.holder = Some((me.name, me.since));
            return Ok(());
        }
        state.holder = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => {
                let kv = get.kvs().first()?;
                let h: Holder = serde_json::from_slice(kv.value()).ok()?;
                Some((h.name, h.since))
            }
            _ => None,
        });
        Ok(())
    }

    /// Writes the changes made here since the last sync to etcd (the fenced ones only
    /// while this proxy is the authority), and replaces the journal's memory with etcd's
    /// copy. On failure the changes wait for the next sync.
    pub async fn sync(&self, journal: &Mutex<Journal>) -> Result<(), Refused> {
        let outbox = lock(journal).take_outbox();
        let fence = self.fence();
        let changes: Vec<Change> = match fence {
            Some(_) => outbox,
            None => outbox.into_iter().filter(|c| !c.fenced()).collect(),
        };
        let result = match self.write(&changes, fence).await {
            Err(Refused::NotAuthority) => {
                let plain: Vec<Change> = changes.into_iter().filter(|c| !c.fenced()).collect();
                self.write(&plain, None).await.map_err(|e| (e, plain))
            }
            other => other.map_err(|e| (e, changes)),
        };
        match result {
            Ok(memory) => {
                self.answered();
                lock(journal).replace(memory);
                Ok(())
            }
            Err((e, unwritten)) => {
                self.failed(&e);
                lock(journal).requeue(unwritten);
                Err(e)
            }
        }
    }

    /// Writes `changes` to etcd under the authority's lease: refused once this proxy no
    /// longer holds it.
    pub async fn commit_fenced(&self, changes: Vec<Change>) -> Result<(), Refused> {
        let fence = self.fence().ok_or(Refused::NotAuthority);
        let written = match fence {
            Ok(fence) => self.write(&changes, Some(fence)).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = &written {
            self.failed(e);
            if matches!(e, Refused::NotAuthority) {
                self.state().held = None;
            }
        }
        written
    }

    /// Compacts etcd's history every [`COMPACT_EVERY`] writes, up to [`HISTORY_KEPT`]
    /// revisions before `revision` (this write's). A failure only waits for the next turn.
    async fn compact_now_and_then(&self, client: &mut Client, revision: i64) {
        let due = {
            let mut state = self.state();
            state.writes += 1;
            state.writes.is_multiple_of(COMPACT_EVERY)
        };
        let upto = revision - HISTORY_KEPT;
        if due && upto > 0 {
            match client.compact(upto, None).await {
                Ok(_) => debug!(revision = upto, "etcd's history compacted"),
                Err(e) => debug!(error = %e, "etcd's history not compacted"),
            }
        }
    }

    /// Applies `changes` to etcd's journal in a compare-and-swap, with the fence when
    /// given; returns the journal as written (or as read, when there was nothing to
    /// change).
    async fn write(&self, changes: &[Change], fence: Option<i64>) -> Result<Memory, Refused> {
        let mut client = self.client().await?;
        let key = self.key("journal");
        for _ in 0..CAS_ROUNDS {
            let got = client.get(key.clone(), None).await?;
            let (mut memory, revision) = match got.kvs().first() {
                Some(kv) => {
                    let memory = serde_json::from_slice(kv.value())
                        .map_err(|e| Refused::Etcd(format!("{key}: unreadable journal: {e}")))?;
                    (memory, kv.mod_revision())
                }
                None => (Memory::default(), 0),
            };
            let mut changed = false;
            for change in changes {
                changed |= memory.apply(change);
            }
            if !changed {
                return Ok(memory);
            }
            let mut when = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )];
            let authority = self.key("authority");
            if let Some(fence) = fence {
                when.push(Compare::create_revision(
                    authority.clone(),
                    CompareOp::Equal,
                    fence,
                ));
            }
            let value = serde_json::to_vec(&memory).expect("serializable");
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(authority, None)]);
            let response = client.txn(txn).await?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                self.compact_now_and_then(&mut client, revision).await;
                return Ok(memory);
            }
            if let Some(fence) = fence {
                let holder = response.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(get) => {
                        Some(get.kvs().first().map(|kv| kv.create_revision()))
                    }
                    _ => None,
                });
                if holder != Some(Some(fence)) {
                    return Err(Refused::NotAuthority);
                }
            }
            // Another proxy wrote in between: read again and apply again.
        }
        Err(Refused::Etcd(format!(
            "{CAS_ROUNDS} writes of the journal in a row lost to other proxies' writes"
        )))
    }
}
