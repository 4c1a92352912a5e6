//! The journal: what the proxy remembers that the cluster may forget.
//!
//! - every migration seen open, with the members of both shards when first seen, kept until
//!   the slot is stable on one owner with nothing open (S7 is visible only through it);
//! - the replicas of each master when last seen, to follow a shard across a failover;
//! - every repair step, written before the step is sent, so a restarted proxy knows what
//!   it was doing (the plan itself is recomputed from the cluster, each step idempotent).
//!
//! On disk it is one JSON file under `state_dir`, replaced atomically (write a temporary
//! file, fsync, rename, fsync the directory), so a crash leaves the old or the new
//! version, never a torn one. Without `state_dir` it lives in memory only.
//!
//! With `[coordination]` it lives in etcd, shared by every proxy of the cluster (see
//! [`super::coordination`]). Every change is then a [`Change`], applied here at once and
//! to etcd's copy the same way, so that two proxies' changes merge instead of one
//! overwriting the other's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::authority::{Migration, Step};
use super::error::{Error, Refused};

/// A repair step as written down before it was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub slot: u16,
    pub step: Step,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// `sent`, then `ok` or the error.
    pub outcome: String,
}

/// Everything remembered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub migrations: BTreeMap<u16, Migration>,
    pub shards: BTreeMap<String, Vec<String>>,
    /// Slots whose repair started and has not finished: a migration on them that looks
    /// live is the proxy's own, cut short, and is to be finished.
    #[serde(default)]
    pub repairing: BTreeSet<u16>,
    /// Slots whose migration had an end flagged failed while open: once both ends are
    /// back, whoever ran it has given up (its MIGRATE failed), and the proxy finishes it.
    #[serde(default)]
    pub interrupted: BTreeSet<u16>,
    /// The most recent repair steps, oldest first (bounded).
    pub steps: Vec<StepRecord>,
}

/// Most step records kept.
const MAX_STEPS: usize = 1000;

/// One change to the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A migration seen open; one already remembered for the slot is kept.
    Seen(u16, Migration),
    /// A master's replicas, as seen now.
    Shard(String, Vec<String>),
    /// An end of the slot's migration was failed by the cluster while it was open.
    Interrupted(u16),
    /// The slot's migration names no node of this cluster: forgotten.
    Foreign(u16),
    /// The slot is stable again: everything about it is forgotten.
    Settled(u16),
    /// The slot's repair started (`true`) or ended.
    Repairing(u16, bool),
    /// A repair step about to be sent, or its outcome.
    Step(StepRecord),
}

impl Change {
    /// A change only the authority makes: it is written to a shared journal under the
    /// authority's lease, and never by another proxy.
    pub fn fenced(&self) -> bool {
        matches!(
            self,
            Change::Settled(_) | Change::Repairing(..) | Change::Step(_)
        )
    }
}

impl Memory {
    /// Applies `change`; false when it changed nothing.
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Seen(slot, m) => {
                if self.migrations.contains_key(slot) {
                    return false;
                }
                self.migrations.insert(*slot, m.clone());
                true
            }
            Change::Shard(master, replicas) => {
                if self.shards.get(master) == Some(replicas) {
                    return false;
                }
                self.shards.insert(master.clone(), replicas.clone());
                true
            }
            Change::Interrupted(slot) => self.interrupted.insert(*slot),
            Change::Foreign(slot) => self.migrations.remove(slot).is_some(),
            Change::Settled(slot) => {
                let migration = self.migrations.remove(slot).is_some();
                let repairing = self.repairing.remove(slot);
                migration | repairing | self.interrupted.remove(slot)
            }
            Change::Repairing(slot, true) => self.repairing.insert(*slot),
            Change::Repairing(slot, false) => self.repairing.remove(slot),
            Change::Step(record) => {
                self.steps.push(record.clone());
                if self.steps.len() > MAX_STEPS {
                    let excess = self.steps.len() - MAX_STEPS;
                    self.steps.drain(..excess);
                }
                true
            }
        }
    }
}

/// The journal and where it is kept.
#[derive(Debug)]
pub struct Journal {
    path: Option<PathBuf>,
    memory: Memory,
    shared: Option<Shared>,
}

/// Where a shared journal's changes that only the authority makes are written, under
/// its lease (etcd, through `coordination`).
pub trait Fence: Send + Sync + std::fmt::Debug {
    /// Writes `changes`; refused once this proxy no longer holds the lease.
    fn commit_fenced(
        &self,
        changes: Vec<Change>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refused>> + Send + '_>>;
}

/// A journal kept in etcd.
#[derive(Debug)]
struct Shared {
    fence: Arc<dyn Fence>,
    /// Changes made here and not yet written to etcd (fenced ones are written as they
    /// are made).
    outbox: Vec<Change>,
}

impl Journal {
    /// Opens the journal in `dir` (created if missing), or an in-memory one for `None`.
    pub fn open(dir: Option<&Path>) -> Result<Journal, Error> {
        let Some(dir) = dir else {
            return Ok(Journal {
                path: None,
                memory: Memory::default(),
                shared: None,
            });
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Journal(format!("state_dir {}: {e}", dir.display())))?;
        let path = dir.join("journal.json");
        let memory = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Journal(format!("{}: unreadable journal: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Memory::default(),
            Err(e) => return Err(Error::Journal(format!("{}: {e}", path.display()))),
        };
        Ok(Journal {
            path: Some(path),
            memory,
            shared: None,
        })
    }

    /// A journal kept in etcd, its fenced changes written through `fence`; empty until
    /// first synced.
    pub fn shared(fence: Arc<dyn Fence>) -> Journal {
        Journal {
            path: None,
            memory: Memory::default(),
            shared: Some(Shared {
                fence,
                outbox: Vec::new(),
            }),
        }
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Where it is kept: `etcd`, `file` or `memory`.
    pub fn source(&self) -> &'static str {
        match (&self.shared, &self.path) {
            (Some(_), _) => "etcd",
            (None, Some(_)) => "file",
            (None, None) => "memory",
        }
    }

    /// Where a shared journal's fenced changes go.
    fn fence(&self) -> Option<&Arc<dyn Fence>> {
        self.shared.as_ref().map(|s| &s.fence)
    }

    /// Makes `change` here; a shared journal writes it to etcd at the next sync. Saving
    /// to disk is the caller's (once for several changes). False when it changed nothing.
    pub fn record(&mut self, change: Change) -> bool {
        if !self.memory.apply(&change) {
            return false;
        }
        if let Some(shared) = &mut self.shared {
            shared.outbox.push(change);
        }
        true
    }

    /// Changes wait to be written to etcd.
    pub fn has_outbox(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| !s.outbox.is_empty())
    }

    /// The changes not yet written to etcd, taken.
    pub fn take_outbox(&mut self) -> Vec<Change> {
        self.shared
            .as_mut()
            .map(|s| std::mem::take(&mut s.outbox))
            .unwrap_or_default()
    }

    /// Puts back changes that could not be written to etcd, ahead of any made since.
    pub fn requeue(&mut self, mut changes: Vec<Change>) {
        if let Some(shared) = &mut self.shared {
            changes.append(&mut shared.outbox);
            shared.outbox = changes;
        }
    }

    /// Replaces what is remembered with etcd's copy, and makes again on it the changes
    /// made here since it was read.
    pub fn replace(&mut self, memory: Memory) {
        self.memory = memory;
        if let Some(shared) = &self.shared {
            for change in &shared.outbox {
                self.memory.apply(change);
            }
        }
    }

    /// Writes the journal out, atomically.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(&self.memory).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Marks or clears `slot` as being repaired, and saves if that changed anything.
    pub fn set_repairing(&mut self, slot: u16, repairing: bool) -> std::io::Result<()> {
        if self.memory.apply(&Change::Repairing(slot, repairing)) {
            self.save()?;
        }
        Ok(())
    }

    /// Records a step about to be sent, and saves.
    pub fn step(&mut self, slot: u16, step: &Step, outcome: &str) -> std::io::Result<()> {
        self.memory
            .apply(&Change::Step(StepRecord::now(slot, step, outcome)));
        self.save()
    }
}

impl StepRecord {
    pub fn now(slot: u16, step: &Step, outcome: &str) -> StepRecord {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        StepRecord {
            slot,
            step: step.clone(),
            at,
            outcome: outcome.to_string(),
        }
    }
}

/// The journal behind its lock (a panic elsewhere while it was held leaves it as it was).
pub fn lock(journal: &Mutex<Journal>) -> std::sync::MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes a change that only the authority makes (the start or end of a repair, a step)
/// and keeps it: in a shared journal it is written to etcd under the authority's lease
/// before this returns, and refused once that lease is lost, so that a proxy that lost
/// it sends no further step; otherwise it is saved to disk.
pub async fn commit(journal: &Mutex<Journal>, change: Change) -> Result<(), Error> {
    let fence = {
        let mut j = lock(journal);
        j.memory.apply(&change);
        match j.fence() {
            Some(fence) => fence.clone(),
            None => {
                return j
                    .save()
                    .map_err(|e| Error::Journal(format!("cannot write the journal: {e}")))
            }
        }
    };
    Ok(fence.commit_fenced(vec![change]).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(source: &str, target: &str) -> Migration {
        Migration {
            source: source.into(),
            source_members: vec![],
            target: target.into(),
            target_members: vec![],
        }
    }

    /// Two proxies' changes applied to one copy in either order give the same journal,
    /// and a change applied twice changes nothing the second time: what a retried
    /// compare-and-swap relies on.
    #[test]
    fn changes_merge_whatever_their_order() {
        let a = [
            Change::Seen(7, migration("a", "b")),
            Change::Shard("a".into(), vec!["a2".into()]),
            Change::Interrupted(7),
        ];
        let b = [
            Change::Seen(7, migration("x", "y")),
            Change::Seen(9, migration("a", "c")),
            Change::Repairing(9, true),
        ];
        let apply = |first: &[Change], then: &[Change]| {
            let mut m = Memory::default();
            for c in first.iter().chain(then) {
                m.apply(c);
            }
            m
        };
        let (ab, ba) = (apply(&a, &b), apply(&b, &a));
        assert_eq!(ab.migrations.get(&9), ba.migrations.get(&9));
        assert_eq!(
            (&ab.shards, &ab.repairing, &ab.interrupted),
            (&ba.shards, &ba.repairing, &ba.interrupted)
        );
        // The first proxy to see slot 7's migration wins: later sightings keep it.
        assert_eq!(ab.migrations[&7].source, "a");
        assert_eq!(ba.migrations[&7].source, "x");
        let mut again = ab.clone();
        assert!(a.iter().chain(&b).all(|c| !again.apply(c)), "applied twice");
        assert!(again.apply(&Change::Settled(9)));
        assert!(!again.migrations.contains_key(&9) && !again.repairing.contains(&9));
    }

    #[test]
    fn only_the_authority_forgets_and_repairs() {
        assert!(Change::Settled(1).fenced());
        assert!(Change::Repairing(1, true).fenced());
        assert!(!Change::Seen(1, migration("a", "b")).fenced());
        assert!(!Change::Interrupted(1).fenced());
    }

    #[test]
    fn survives_a_reopen_and_never_leaves_a_torn_file() {
        let dir = std::env::temp_dir().join(format!("slotguard-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut j = Journal::open(Some(&dir)).unwrap();
        j.memory.migrations.insert(
            7,
            Migration {
                source: "a".into(),
                source_members: vec!["a2".into()],
                target: "b".into(),
                target_members: vec![],
            },
        );
        j.step(
            7,
            &Step::Stable {
                on: "b".into(),
                slot: 7,
            },
            "sent",
        )
        .unwrap();
        let again = Journal::open(Some(&dir)).unwrap();
        assert_eq!(again.memory, j.memory);
        assert!(!dir.join("journal.json.tmp").exists());
        std::fs::write(dir.join("journal.json"), b"{ torn").unwrap();
        assert!(Journal::open(Some(&dir))
            .unwrap_err()
            .to_string()
            .contains("unreadable journal"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
