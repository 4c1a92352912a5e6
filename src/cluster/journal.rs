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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::authority::{Migration, Step};

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

/// The journal and where it is kept.
#[derive(Debug)]
pub struct Journal {
    path: Option<PathBuf>,
    pub memory: Memory,
}

impl Journal {
    /// Opens the journal in `dir` (created if missing), or an in-memory one for `None`.
    pub fn open(dir: Option<&Path>) -> Result<Journal, String> {
        let Some(dir) = dir else {
            return Ok(Journal {
                path: None,
                memory: Memory::default(),
            });
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
        let path = dir.join("journal.json");
        let memory = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: unreadable journal: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Memory::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Journal {
            path: Some(path),
            memory,
        })
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
        let changed = if repairing {
            self.memory.repairing.insert(slot)
        } else {
            self.memory.repairing.remove(&slot)
        };
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Records a step about to be sent, and saves.
    pub fn step(&mut self, slot: u16, step: &Step, outcome: &str) -> std::io::Result<()> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.memory.steps.push(StepRecord {
            slot,
            step: step.clone(),
            at,
            outcome: outcome.to_string(),
        });
        if self.memory.steps.len() > MAX_STEPS {
            let excess = self.memory.steps.len() - MAX_STEPS;
            self.memory.steps.drain(..excess);
        }
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .contains("unreadable journal"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
