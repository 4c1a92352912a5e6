//! What the authority decides for a slot, and the repair it plans: the vocabulary in
//! which the control plane reports unsettled slots (`/status`, `slotguard check`) and
//! journals repair steps. `cluster::authority` makes these; nothing here decides anything.

use serde::{Deserialize, Serialize};

/// One step of a repair. Every step is idempotent: repeating it after a crash is safe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `CLUSTER SETSLOT slot NODE id` on `on`.
    Bind {
        on: String,
        slot: u16,
        owner: String,
    },
    /// `CLUSTER SETSLOT slot IMPORTING source` on `on`.
    Importing {
        on: String,
        slot: u16,
        source: String,
    },
    /// `CLUSTER SETSLOT slot MIGRATING target` on `on`.
    Migrating {
        on: String,
        slot: u16,
        target: String,
    },
    /// `CLUSTER SETSLOT slot STABLE` on `on`.
    Stable { on: String, slot: u16 },
    /// Move every key of `slot` from `from` to `to` with MIGRATE, then wait until `to`'s
    /// replicas have them. With `replace` (finishing a migration) `from`'s copy wins over
    /// one already at `to`: the slot was held since the fault, so `from` has the copy
    /// clients last wrote. Without (giving keys back to their owner) the owner's copy wins:
    /// it can only have been written after the migration stopped; the old one is dropped
    /// and logged by name.
    MoveKeys {
        from: String,
        to: String,
        slot: u16,
        replace: bool,
    },
    /// Copy every key of `slot` from `from`, a master cut off by a partition, to `to`,
    /// through the proxy (DUMP and PTTL there, RESTORE here, nothing replaced), then wait
    /// until `to`'s replicas have them. `from` refuses reads while its cluster is down, so
    /// `cluster-allow-reads-when-down` is set there for the copy and put back after.
    CopyKeys { from: String, to: String, slot: u16 },
    /// `CLUSTER MIGRATESLOTS SLOTSRANGE .. NODE target` on `on` (Valkey 9's atomic slot
    /// migration of `ranges`, inclusive), then wait until the job ends: the server moves
    /// keys and ownership itself.
    MigrateSlots {
        on: String,
        ranges: Vec<(u16, u16)>,
        target: String,
    },
}

/// Which fault of the catalogue (docs/FAULTS.md) broke a slot. It shows as the catalogue's
/// names in `/status`, logs and `slotguard check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Case {
    /// The target of a migration failed over (or is failing): finished forward onto it.
    #[serde(rename = "S2/S3/S9")]
    TargetLost,
    /// The source of a migration failed over: finished forward onto the target.
    #[serde(rename = "S4/S5/S6")]
    SourceLost,
    /// A migration only the journal remembers (both ends lost, or forgotten by both).
    #[serde(rename = "S7")]
    Remembered,
    /// Every live node binds the slot to a dead master that had finished the migration.
    #[serde(rename = "S10")]
    BoundToDead,
    /// A node imports a slot its owner does not migrate: its keys go back.
    #[serde(rename = "S13/S14")]
    StrayImport,
    /// A master holds keys of a slot another owns, with nothing open: they go to the owner.
    #[serde(rename = "S7/S14 strays")]
    StrayKeys,
    /// A master cut off by a partition claims the slot and holds its keys; the other side
    /// gave it, with a higher epoch, to a node that never heard: the keys are copied there.
    #[serde(rename = "S11")]
    Partitioned,
    /// Every node binds the slot to a live master but that master itself, whose own table
    /// lost it: it claims it again.
    #[serde(rename = "S20")]
    Disowned,
    /// A repair of the proxy's own, cut short.
    #[serde(rename = "resume")]
    Resume,
}

impl Case {
    /// The catalogue's name for the case.
    pub fn name(self) -> &'static str {
        match self {
            Case::TargetLost => "S2/S3/S9",
            Case::SourceLost => "S4/S5/S6",
            Case::Remembered => "S7",
            Case::BoundToDead => "S10",
            Case::StrayImport => "S13/S14",
            Case::StrayKeys => "S7/S14 strays",
            Case::Partitioned => "S11",
            Case::Disowned => "S20",
            Case::Resume => "resume",
        }
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Compared by the catalogue's name (the case table's rows say "S4/S5/S6").
impl PartialEq<&str> for Case {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// What the authority decided for a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum State {
    /// One live owner, nothing open.
    Stable { owner: String },
    /// A migration whose ends are both live and agree: left to whoever runs it.
    Migrating { from: String, to: String },
    /// Broken by a fault of the catalogue; `plan` repairs it.
    Broken { case: Case, why: String },
    /// No live owner and nothing to repair with: requests wait (S1, S8).
    Orphaned { why: Orphan },
    /// More than one live master claims it.
    Conflicted { claims: Vec<String> },
}

/// Why no live master can serve a slot yet, and so what would settle it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Orphan {
    /// An end of its migration does not answer, and the cluster has not failed it over.
    Silent { node: String },
    /// Its migration's target shard has no live master.
    TargetShardDown { target: String },
    /// Its migration's source shard has no live master yet.
    SourceShardDown { source: String },
    /// Nothing binds it to any master, live or failed.
    Unbound,
    /// Bound to failed masters; a live master's keys of the slot are not counted yet.
    Uncounted { dead: Vec<String> },
    /// Bound to failed masters, and no live master holds its keys or is known to have
    /// replicated them.
    NoHeir { dead: Vec<String> },
}

impl Orphan {
    /// What slotguard waits for, or would need, to settle the slot.
    pub fn needs(&self) -> &'static str {
        match self {
            Orphan::Silent { .. } => {
                "the cluster to fail the silent node (after cluster-node-timeout) or the node to answer again"
            }
            Orphan::Uncounted { .. } => {
                "the keys of the slot on every live master: a look with every master answering"
            }
            Orphan::TargetShardDown { .. } | Orphan::SourceShardDown { .. } | Orphan::NoHeir { .. } => {
                "the failed master back, or a replica of it promoted (CLUSTER FAILOVER TAKEOVER on a replica that has its keys); slotguard then finishes the repair"
            }
            Orphan::Unbound => "a live master to serve the slot",
        }
    }
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Orphan::Silent { node } => {
                write!(f, "waiting: {node} does not answer and is not failed over yet")
            }
            Orphan::TargetShardDown { target } => {
                write!(f, "the target shard of the migration ({target}) has no live master")
            }
            Orphan::SourceShardDown { source } => write!(
                f,
                "waiting for the source shard of the migration ({source}) to fail over"
            ),
            Orphan::Unbound => f.write_str("no live master serves the slot"),
            Orphan::Uncounted { dead } => write!(
                f,
                "bound to {}, failed; waiting for it to return (keys of the slot not counted)",
                dead.join(", ")
            ),
            Orphan::NoHeir { dead } => write!(
                f,
                "bound to {}, failed; no live master holds keys of the slot or is known to have replicated it: waiting for it to return",
                dead.join(", ")
            ),
        }
    }
}

/// Shown as its sentence (`/status`, `slotguard check`).
impl Serialize for Orphan {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A slot's state and, when broken, the repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub slot: u16,
    pub state: State,
    /// Steps to run, in order; node ids.
    pub plan: Vec<Step>,
}

impl Decision {
    /// True when requests for the slot must wait (anything but stable or a live migration).
    pub fn holds(&self) -> bool {
        !matches!(self.state, State::Stable { .. } | State::Migrating { .. })
    }
}
