//! The authority's decisions as a table: cluster views (and the journal) in, slot state and
//! repair plan out, one row per docs/FAULTS.md case, plus mixed cases. Each case runs a second
//! time with no memory of the migration (no journal, no shard lineage), as a proxy started
//! after the fault sees it: the same decision (`run_with_and_without_memory`), or, where
//! memory changes it, a row of its own that says what is decided instead (S1, S2, S7).
//!
//! The cluster: masters A (slots 0-99), B (100-199), C (200-16383) with replicas A2, B2,
//! C2. Slot 50 migrates from A to B unless a case says otherwise.

use super::*;
use Step::*;

const X: u16 = 50;

#[derive(Clone)]
struct Node {
    id: &'static str,
    master: bool,
    master_of: Option<&'static str>,
    slots: Vec<(u16, u16)>,
    migrating: Vec<(u16, String)>,
    importing: Vec<(u16, String)>,
    /// Not answering; flagged `fail` by the others when `failed`.
    dead: bool,
    failed: bool,
    epoch: u64,
}

fn master(id: &'static str, slots: &[(u16, u16)]) -> Node {
    Node {
        id,
        master: true,
        master_of: None,
        slots: slots.to_vec(),
        migrating: vec![],
        importing: vec![],
        dead: false,
        failed: false,
        epoch: 0,
    }
}

fn replica(id: &'static str, of: &'static str) -> Node {
    Node {
        id,
        master: false,
        master_of: Some(of),
        slots: vec![],
        migrating: vec![],
        importing: vec![],
        dead: false,
        failed: false,
        epoch: 0,
    }
}

/// The healthy cluster.
fn base() -> Vec<Node> {
    vec![
        master("A", &[(0, 99)]),
        master("B", &[(100, 199)]),
        master("C", &[(200, 16383)]),
        replica("A2", "A"),
        replica("B2", "B"),
        replica("C2", "C"),
    ]
}

fn get<'a>(nodes: &'a mut [Node], id: &str) -> &'a mut Node {
    nodes.iter_mut().find(|n| n.id == id).unwrap()
}

/// `dead` stops answering and is failed over to `heir`, which takes its slots.
fn fail_over(nodes: &mut [Node], dead: &str, heir: &str) {
    let slots = std::mem::take(&mut get(nodes, dead).slots);
    let d = get(nodes, dead);
    d.dead = true;
    d.failed = true;
    d.migrating.clear();
    d.importing.clear();
    let h = get(nodes, heir);
    h.master = true;
    h.master_of = None;
    h.slots = slots;
}

fn views(nodes: &[Node]) -> Vec<(String, Vec<NodeLine>)> {
    nodes
        .iter()
        .filter(|n| !n.dead)
        .map(|me| {
            let lines = nodes
                .iter()
                .map(|n| NodeLine {
                    id: n.id.into(),
                    addr: format!("{}:1", n.id),
                    myself: n.id == me.id,
                    master: n.master,
                    fail: n.failed && n.id != me.id,
                    config_epoch: n.epoch,
                    master_id: n.master_of.map(Into::into),
                    slots: n.slots.clone(),
                    migrating: if n.id == me.id {
                        n.migrating.clone()
                    } else {
                        vec![]
                    },
                    importing: if n.id == me.id {
                        n.importing.clone()
                    } else {
                        vec![]
                    },
                    ..NodeLine::default()
                })
                .collect();
            (format!("{}:1", me.id), lines)
        })
        .collect()
}

fn journal_a_to_b() -> BTreeMap<u16, Migration> {
    BTreeMap::from([(
        X,
        Migration {
            source: "A".into(),
            source_members: vec!["A2".into()],
            target: "B".into(),
            target_members: vec!["B2".into()],
        },
    )])
}

/// Slot 50 half moved: A migrating to B, B importing from A.
fn mid_migration() -> Vec<Node> {
    let mut nodes = base();
    get(&mut nodes, "A").migrating.push((X, "B".into()));
    get(&mut nodes, "B").importing.push((X, "A".into()));
    nodes
}

#[derive(Clone)]
struct Case {
    name: &'static str,
    nodes: Vec<Node>,
    journal: BTreeMap<u16, Migration>,
    keys: Vec<(&'static str, u64)>,
    grace_over: bool,
    /// The proxy's own repair of the slot was cut short.
    ours: bool,
    /// An end of the migration was seen failed while it was open.
    interrupted: bool,
    /// The journal knows the shards' members (a proxy that watched the cluster before).
    lineage: bool,
    /// The lineage also remembers an old relation: `.1` once a replica of `.0`.
    once: Option<(&'static str, &'static str)>,
    /// The servers are Valkey 8+ (`Memory::importer_takes_back`).
    valkey: bool,
    slot: u16,
    want_case: Option<&'static str>,
    want_state: &'static str,
    want_plan: Vec<Step>,
}

fn run(case: Case) {
    let views = views(&case.nodes);
    let cluster = Cluster::new(&views);
    let shards = match case.lineage {
        true => BTreeMap::from([
            ("A".to_string(), vec!["A2".to_string()]),
            ("B".to_string(), vec!["B2".to_string()]),
            ("C".to_string(), vec!["C2".to_string()]),
        ]),
        false => BTreeMap::new(),
    };
    let mut shards = shards;
    if let Some((master, replica)) = case.once {
        shards.insert(master.to_string(), vec![replica.to_string()]);
    }
    let keys: HashMap<(String, u16), u64> = case
        .keys
        .iter()
        .map(|(id, n)| ((id.to_string(), case.slot), *n))
        .collect();
    let grace = if case.grace_over {
        BTreeSet::from([case.slot])
    } else {
        BTreeSet::new()
    };
    let interrupted = if case.interrupted {
        BTreeSet::from([case.slot])
    } else {
        BTreeSet::new()
    };
    let repairing = if case.ours {
        BTreeSet::from([case.slot])
    } else {
        BTreeSet::new()
    };
    let memory = Memory {
        migrations: &case.journal,
        shards: &shards,
        keys: &keys,
        settled_long_enough: &grace,
        repairing: &repairing,
        interrupted: &interrupted,
        importer_takes_back: case.valkey,
    };
    let d = decide(&cluster, &memory, case.slot);
    let state = match &d.state {
        State::Stable { .. } => "stable",
        State::Migrating { .. } => "migrating",
        State::Broken { .. } => "broken",
        State::Orphaned { .. } => "orphaned",
        State::Conflicted { .. } => "conflicted",
    };
    assert_eq!(state, case.want_state, "{}: {:?}", case.name, d.state);
    if let (Some(want), State::Broken { case: got, .. }) = (case.want_case, &d.state) {
        assert_eq!(*got, want, "{}", case.name);
    }
    assert_eq!(d.plan, case.want_plan, "{}", case.name);
}

/// Runs a case as watched, then again with no memory of the migration at all (no journal,
/// no shard lineage: a proxy started after the fault): the cluster alone shows enough, and
/// the decision is the same.
fn run_with_and_without_memory(case: Case) {
    let unseen = Case {
        journal: BTreeMap::new(),
        lineage: false,
        once: None,
        ..case.clone()
    };
    run(case);
    run(unseen);
}

fn bind(on: &str, owner: &str) -> Step {
    Bind {
        on: on.into(),
        slot: X,
        owner: owner.into(),
    }
}

fn case(name: &'static str, nodes: Vec<Node>) -> Case {
    Case {
        name,
        nodes,
        journal: journal_a_to_b(),
        keys: vec![],
        grace_over: false,
        ours: false,
        interrupted: false,
        lineage: true,
        once: None,
        valkey: false,
        slot: X,
        want_case: None,
        want_state: "stable",
        want_plan: vec![],
    }
}

#[test]
fn a_stable_slot_needs_nothing() {
    run(Case {
        journal: BTreeMap::new(),
        ..case("stable", base())
    });
}

#[test]
fn a_live_migration_is_left_to_its_driver() {
    run(Case {
        want_state: "migrating",
        ..case("live migration", mid_migration())
    });
}

/// The migration of slot 50 finished from A onto B.
fn finish_onto_b() -> Vec<Step> {
    vec![
        bind("B", "A"),
        Importing {
            on: "B".into(),
            slot: X,
            source: "A".into(),
        },
        Migrating {
            on: "A".into(),
            slot: X,
            target: "B".into(),
        },
        MoveKeys {
            from: "A".into(),
            to: "B".into(),
            slot: X,
            replace: true,
        },
        bind("B", "B"),
        bind("A", "B"),
        bind("C", "B"),
    ]
}

/// The migration of slot 50 finished from A onto B2, the target's heir.
fn finish_onto_b2() -> Vec<Step> {
    vec![
        bind("B2", "A"),
        Importing {
            on: "B2".into(),
            slot: X,
            source: "A".into(),
        },
        Migrating {
            on: "A".into(),
            slot: X,
            target: "B2".into(),
        },
        MoveKeys {
            from: "A".into(),
            to: "B2".into(),
            slot: X,
            replace: true,
        },
        bind("B2", "B2"),
        bind("A", "B2"),
        bind("C", "B2"),
    ]
}

/// S2, remembered or not. With no memory of the target's shard, its heir is the live
/// master holding the moved keys; with none moved, the migration is undone on the source.
#[test]
fn s2_target_killed_and_failed_over() {
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "B", "B2");
    let finish = finish_onto_b2();
    run(Case {
        keys: vec![("A", 7), ("B2", 3)],
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: finish.clone(),
        ..case("S2", nodes.clone())
    });
    let unseen = |keys| Case {
        journal: BTreeMap::new(),
        lineage: false,
        once: None,
        keys,
        ..case("S2 unseen", nodes.clone())
    };
    run(Case {
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: finish,
        ..unseen(vec![("A", 100), ("B2", 100), ("C", 0)])
    });
    run(Case {
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: vec![Stable {
            on: "A".into(),
            slot: X,
        }],
        ..unseen(vec![("A", 200), ("B2", 0), ("C", 0)])
    });
    // Keys on two others: never guessed.
    run(Case {
        want_state: "conflicted",
        ..unseen(vec![("A", 100), ("B2", 50), ("C", 50)])
    });
}

/// S2 on Valkey: SETSLOT is replicated, so B2 took over importing the slot from A, and A,
/// told of the failover, migrates it to B2: the migration looks whole. B died importing
/// and keeps that in its nodes.conf; finished onto B2, B started again would take the
/// slot, and its shard, back with a bumped epoch. So the heir gives its keys back, and
/// the migration is undone on A. Unremembered, it is a live migration like any other.
#[test]
fn s2_on_valkey_the_heir_of_an_importing_target_gives_the_keys_back() {
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "B", "B2");
    get(&mut nodes, "A").migrating = vec![(X, "B2".into())];
    get(&mut nodes, "B2").importing.push((X, "A".into()));
    let undo = vec![
        Stable {
            on: "A".into(),
            slot: X,
        },
        MoveKeys {
            from: "B2".into(),
            to: "A".into(),
            slot: X,
            replace: false,
        },
        Stable {
            on: "B2".into(),
            slot: X,
        },
    ];
    let c = |interrupted| Case {
        keys: vec![("A", 7), ("B2", 3)],
        interrupted,
        valkey: true,
        ..case("S2 on Valkey", nodes.clone())
    };
    run(Case {
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: undo,
        ..c(true)
    });
    run(Case {
        journal: BTreeMap::new(),
        lineage: false,
        once: None,
        want_state: "migrating",
        ..c(false)
    });
    // Undone: nothing open, A owns the slot and B2 holds none of its keys. Still
    // remembered, it is not finished onto B2 after all.
    get(&mut nodes, "A").migrating.clear();
    get(&mut nodes, "B2").importing.clear();
    run(Case {
        keys: vec![("A", 10), ("B2", 0)],
        interrupted: true,
        valkey: true,
        ..case("S2 on Valkey, undone", nodes)
    });
}

#[test]
fn s3_target_manually_failed_over() {
    let mut nodes = mid_migration();
    // B is alive but a replica of B2 now; it forgot its importing state.
    let slots = std::mem::take(&mut get(&mut nodes, "B").slots);
    let b = get(&mut nodes, "B");
    b.master = false;
    b.master_of = Some("B2");
    b.importing.clear();
    let b2 = get(&mut nodes, "B2");
    b2.master = true;
    b2.master_of = None;
    b2.slots = slots;
    run_with_and_without_memory(Case {
        keys: vec![("A", 7), ("B2", 3)],
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: finish_onto_b2(),
        ..case("S3", nodes)
    });
}

#[test]
fn s4_source_killed_and_failed_over() {
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "A", "A2");
    run_with_and_without_memory(Case {
        keys: vec![("A2", 5), ("B", 4)],
        want_state: "broken",
        want_case: Some("S4/S5/S6"),
        want_plan: finish_from_a2_onto_b(),
        ..case("S4", nodes)
    });
}

/// S5's state: A failed over by hand to A2 mid-migration (A a replica now, its migrating
/// state gone; A2 owns the slot), B still importing from A.
fn source_failed_over_by_hand() -> Vec<Node> {
    let mut nodes = mid_migration();
    let slots = std::mem::take(&mut get(&mut nodes, "A").slots);
    let a = get(&mut nodes, "A");
    a.master = false;
    a.master_of = Some("A2");
    a.migrating.clear();
    let a2 = get(&mut nodes, "A2");
    a2.master = true;
    a2.master_of = None;
    a2.slots = slots;
    nodes
}

/// The migration of slot 50 finished from A2, the source's heir, onto B.
fn finish_from_a2_onto_b() -> Vec<Step> {
    vec![
        bind("B", "A2"),
        Importing {
            on: "B".into(),
            slot: X,
            source: "A2".into(),
        },
        Migrating {
            on: "A2".into(),
            slot: X,
            target: "B".into(),
        },
        MoveKeys {
            from: "A2".into(),
            to: "B".into(),
            slot: X,
            replace: true,
        },
        bind("B", "B"),
        bind("A2", "B"),
        bind("C", "B"),
    ]
}

#[test]
fn s5_source_manually_failed_over() {
    let nodes = source_failed_over_by_hand();
    run_with_and_without_memory(Case {
        keys: vec![("A2", 5)],
        want_state: "broken",
        want_case: Some("S4/S5/S6"),
        want_plan: finish_from_a2_onto_b(),
        ..case("S5", nodes)
    });
}

/// S5 once more, with a lineage that remembers the target B as a replica of A2 in the past
/// (replica migration and failovers move nodes between shards): A2, the source's heir, is
/// a live master and sorts before B, but B, alive, leads its own shard. Seen in the
/// coordination test: the repair bound the slot to A2 again and again, B still importing.
#[test]
fn s5_with_an_old_relation_in_the_lineage_finishes_onto_the_live_target() {
    let nodes = source_failed_over_by_hand();
    run(Case {
        keys: vec![("A2", 5)],
        once: Some(("A2", "B")),
        want_state: "broken",
        want_case: Some("S4/S5/S6"),
        want_plan: finish_from_a2_onto_b(),
        ..case("S5, old relation", nodes)
    });
}

#[test]
fn s6_source_killed_after_every_key_moved() {
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "A", "A2");
    run_with_and_without_memory(Case {
        keys: vec![("B", 9)],
        want_state: "broken",
        want_case: Some("S4/S5/S6"),
        // A2's copy of the slot is empty: nothing to move, only the finalize.
        want_plan: vec![
            bind("B", "A2"),
            Importing {
                on: "B".into(),
                slot: X,
                source: "A2".into(),
            },
            bind("B", "B"),
            bind("A2", "B"),
            bind("C", "B"),
        ],
        ..case("S6", nodes)
    });
}

#[test]
fn s7_both_ends_failed_over_is_seen_only_through_the_journal() {
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "A", "A2");
    fail_over(&mut nodes, "B", "B2");
    let plan = vec![
        bind("B2", "A2"),
        Importing {
            on: "B2".into(),
            slot: X,
            source: "A2".into(),
        },
        Migrating {
            on: "A2".into(),
            slot: X,
            target: "B2".into(),
        },
        MoveKeys {
            from: "A2".into(),
            to: "B2".into(),
            slot: X,
            replace: true,
        },
        bind("B2", "B2"),
        bind("A2", "B2"),
        bind("C", "B2"),
    ];
    run(Case {
        keys: vec![("A2", 2), ("B2", 6)],
        want_state: "broken",
        want_case: Some("S7"),
        want_plan: plan,
        ..case("S7", nodes.clone())
    });
    // On Valkey (as a nemesis run met it) B died importing and would take the slot, and
    // its shard, back from B2 were the migration finished there: it is undone onto A2.
    run(Case {
        keys: vec![("A2", 2), ("B2", 6)],
        valkey: true,
        want_state: "broken",
        want_case: Some("S7"),
        want_plan: vec![MoveKeys {
            from: "B2".into(),
            to: "A2".into(),
            slot: X,
            replace: false,
        }],
        ..case("S7 on Valkey", nodes.clone())
    });
    // Without the journal, the moved keys are strays on B2, which does not own the slot:
    // they go to the owner A2 (nothing replaced), and the slot stays there.
    run(Case {
        journal: BTreeMap::new(),
        keys: vec![("A2", 2), ("B2", 6)],
        want_state: "broken",
        want_case: Some("S7/S14 strays"),
        want_plan: vec![
            Importing {
                on: "B2".into(),
                slot: X,
                source: "A2".into(),
            },
            MoveKeys {
                from: "B2".into(),
                to: "A2".into(),
                slot: X,
                replace: false,
            },
            Stable {
                on: "B2".into(),
                slot: X,
            },
        ],
        ..case("S7 unseen", nodes.clone())
    });
    // Once they are moved, nothing is left to do.
    run(Case {
        journal: BTreeMap::new(),
        keys: vec![("A2", 8), ("B2", 0)],
        ..case("S7 unseen, repaired", nodes)
    });
}

#[test]
fn s9_target_finalized_itself_then_died() {
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "B", "B2");
    run_with_and_without_memory(Case {
        keys: vec![("A", 0), ("B2", 10)],
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: vec![
            bind("B2", "A"),
            Importing {
                on: "B2".into(),
                slot: X,
                source: "A".into(),
            },
            bind("B2", "B2"),
            bind("A", "B2"),
            bind("C", "B2"),
        ],
        ..case("S9", nodes)
    });
}

#[test]
fn s10_slot_bound_to_a_dead_target() {
    let mut nodes = base();
    // A gave the slot to B (no epoch bump), then B died and B2 took over B's own slots.
    get(&mut nodes, "A").slots = vec![(0, 49), (51, 99)];
    get(&mut nodes, "B").slots.push((X, X));
    fail_over(&mut nodes, "B", "B2");
    get(&mut nodes, "B2").slots.retain(|&(a, _)| a != X);
    run(Case {
        keys: vec![("B2", 10)],
        want_state: "broken",
        want_case: Some("S10"),
        want_plan: vec![
            Importing {
                on: "B2".into(),
                slot: X,
                source: "A".into(),
            },
            bind("B2", "B2"),
            bind("A", "B2"),
            bind("C", "B2"),
        ],
        ..case("S10", nodes)
    });
}

/// S10 with no memory of the migration: the slot goes where its keys are.
#[test]
fn s10_unseen_the_slot_goes_to_the_live_master_holding_its_keys() {
    let mut nodes = base();
    get(&mut nodes, "A").slots = vec![(0, 49), (51, 99)];
    get(&mut nodes, "B").slots.push((X, X));
    fail_over(&mut nodes, "B", "B2");
    // B2 never heard of the slot: the others still bind it to B.
    get(&mut nodes, "B2").slots.retain(|&(a, _)| a != X);
    get(&mut nodes, "B").slots.push((X, X));
    let plan = vec![
        Importing {
            on: "B2".into(),
            slot: X,
            source: "A".into(),
        },
        bind("B2", "B2"),
        bind("A", "B2"),
        bind("C", "B2"),
    ];
    let unseen = |lineage, keys| Case {
        journal: BTreeMap::new(),
        lineage,
        keys,
        ..case("S10 unseen", nodes.clone())
    };
    // The heir holds the keys, with or without a memory of the shards.
    for lineage in [false, true] {
        run(Case {
            want_state: "broken",
            want_case: Some("S10"),
            want_plan: plan.clone(),
            ..unseen(lineage, vec![("A", 0), ("B2", 60), ("C", 0)])
        });
    }
    // An empty slot: the heir the journal remembers takes it; with no memory, it waits.
    run(Case {
        want_state: "broken",
        want_plan: plan.clone(),
        ..unseen(true, vec![("A", 0), ("B2", 0), ("C", 0)])
    });
    run(Case {
        want_state: "orphaned",
        ..unseen(false, vec![("A", 0), ("B2", 0), ("C", 0)])
    });
    // Keys on two masters, or on one outside the dead master's shard: never guessed.
    run(Case {
        want_state: "conflicted",
        ..unseen(false, vec![("A", 3), ("B2", 60), ("C", 0)])
    });
    run(Case {
        want_state: "conflicted",
        ..unseen(true, vec![("A", 3), ("B2", 0), ("C", 0)])
    });
    // Keys not counted (a whole shard down): it waits for its master.
    run(Case {
        want_state: "orphaned",
        ..unseen(false, vec![])
    });
}

#[test]
fn s13_abort_on_the_source_only_is_rolled_back() {
    let mut nodes = base();
    get(&mut nodes, "B").importing.push((X, "A".into()));
    let c = |grace_over, b_keys| Case {
        grace_over,
        keys: vec![("B", b_keys)],
        ..case("S13", nodes.clone())
    };
    // Without keys on B it may be a migration being set up: wait for the grace.
    run_with_and_without_memory(Case {
        want_state: "migrating",
        ..c(false, 0)
    });
    run_with_and_without_memory(Case {
        want_state: "broken",
        want_case: Some("S13/S14"),
        want_plan: vec![Stable {
            on: "B".into(),
            slot: X,
        }],
        ..c(true, 0)
    });
    // With keys on B it cannot be one: rolled back at once, grace or not.
    for grace_over in [false, true] {
        run_with_and_without_memory(Case {
            want_state: "broken",
            want_case: Some("S13/S14"),
            want_plan: vec![
                MoveKeys {
                    from: "B".into(),
                    to: "A".into(),
                    slot: X,
                    replace: false,
                },
                Stable {
                    on: "B".into(),
                    slot: X,
                },
            ],
            ..c(grace_over, 3)
        });
    }
}

#[test]
fn s14_stale_keys_on_a_restarted_master_go_back_to_the_owner() {
    let mut nodes = base();
    get(&mut nodes, "C").importing.push((X, "A".into()));
    run(Case {
        journal: BTreeMap::new(),
        keys: vec![("C", 2)],
        grace_over: true,
        want_state: "broken",
        want_case: Some("S13/S14"),
        want_plan: vec![
            MoveKeys {
                from: "C".into(),
                to: "A".into(),
                slot: X,
                replace: false,
            },
            Stable {
                on: "C".into(),
                slot: X,
            },
        ],
        ..case("S14", nodes)
    });
}

#[test]
fn s1_target_down_without_failover_waits() {
    let mut nodes = mid_migration();
    let b = get(&mut nodes, "B");
    b.dead = true;
    b.failed = true;
    get(&mut nodes, "B2").dead = true;
    run_with_and_without_memory(Case {
        want_state: "orphaned",
        ..case("S1", nodes)
    });
}

#[test]
fn s8_no_majority_waits() {
    let mut nodes = base();
    for id in ["A", "A2", "B", "B2"] {
        get(&mut nodes, id).dead = true;
    }
    run(Case {
        journal: BTreeMap::new(),
        want_state: "orphaned",
        ..case("S8", nodes)
    });
}

#[test]
fn two_live_claims_are_a_conflict() {
    let mut nodes = base();
    get(&mut nodes, "C").slots.push((X, X));
    run(Case {
        journal: BTreeMap::new(),
        want_state: "conflicted",
        ..case("conflict", nodes.clone())
    });
    // And the slot is looked at with no migration open or remembered: the two sides of a
    // healed partition, before Redis settles which one keeps it.
    let views = views(&nodes);
    let candidates = Cluster::new(&views).candidates();
    assert!(
        candidates.contains(&X),
        "a slot claimed twice is a candidate"
    );
    assert!(!candidates.contains(&(X + 1)), "a slot claimed once is not");
}

#[test]
fn a_finished_migration_is_stable_and_forgettable() {
    let mut nodes = base();
    get(&mut nodes, "A").slots = vec![(0, 49), (51, 99)];
    get(&mut nodes, "B").slots.push((X, X));
    run(Case {
        want_state: "stable",
        ..case("finished", nodes)
    });
}

#[test]
fn mixed_one_node_source_of_one_slot_and_target_of_another() {
    // Slot 50 A -> B (A dies), slot 150 B -> C (healthy and live).
    let mut nodes = mid_migration();
    get(&mut nodes, "B").migrating.push((150, "C".into()));
    get(&mut nodes, "C").importing.push((150, "B".into()));
    fail_over(&mut nodes, "A", "A2");
    run(Case {
        keys: vec![("A2", 1)],
        want_state: "broken",
        want_case: Some("S4/S5/S6"),
        want_plan: finish_from_a2_onto_b(),
        ..case("mixed 50", nodes.clone())
    });
    run(Case {
        journal: BTreeMap::new(),
        slot: 150,
        want_state: "migrating",
        ..case("mixed 150", nodes)
    });
}

#[test]
fn a_repair_cut_short_by_a_proxy_crash_is_finished_not_left_to_a_driver() {
    // S4 after the first three steps of its repair: it looks like a live migration A2 -> B.
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "A", "A2");
    get(&mut nodes, "A2").migrating.push((X, "B".into()));
    get(&mut nodes, "B").importing = vec![(X, "A2".into())];
    run(Case {
        keys: vec![("A2", 5)],
        want_state: "migrating",
        ..case("someone else's live migration", nodes.clone())
    });
    run(Case {
        keys: vec![("A2", 5)],
        ours: true,
        want_state: "broken",
        want_case: Some("resume"),
        want_plan: finish_from_a2_onto_b(),
        ..case("our cut repair", nodes)
    });
}

#[test]
fn s9_when_the_promoted_replica_already_owns_the_slot_only_the_others_are_told() {
    // B's finalize reached B2 before B died: B2 was promoted owning slot 50, and A (which
    // accepted B2's higher epoch) still shows the slot migrating.
    let mut nodes = mid_migration();
    get(&mut nodes, "A").slots = vec![(0, 49), (51, 99)];
    get(&mut nodes, "B").slots.push((X, X));
    fail_over(&mut nodes, "B", "B2");
    run_with_and_without_memory(Case {
        keys: vec![("A", 0), ("B2", 10)],
        want_state: "broken",
        want_case: Some("S2/S3/S9"),
        want_plan: vec![bind("A", "B2"), bind("C", "B2")],
        ..case("S9, news reached the replica", nodes)
    });
}

#[test]
fn a_target_finalized_before_its_emptied_source_is_not_a_conflict() {
    // The safe order's window: B bound the slot to itself (a newer epoch); A, which still
    // claims it, migrates it to B and has no key of it left. Both say where every key is.
    let finalized = || {
        let mut nodes = mid_migration();
        let b = get(&mut nodes, "B");
        b.importing.clear();
        b.slots.push((X, X));
        b.epoch = 7;
        get(&mut nodes, "A").epoch = 3;
        nodes
    };
    run_with_and_without_memory(Case {
        keys: vec![("A", 0), ("B", 100)],
        want_state: "migrating",
        ..case("finalized on the target only", finalized())
    });
    // A key left on the source, or keys not counted: a conflict, held.
    for keys in [vec![("A", 1), ("B", 100)], vec![]] {
        run(Case {
            keys,
            want_state: "conflicted",
            ..case("finalized with keys left on the source", finalized())
        });
    }
    // The source's claim newer (a failover on its side, as in S11 on Valkey, whose heir
    // keeps migrating): a conflict.
    let mut nodes = finalized();
    get(&mut nodes, "A").epoch = 9;
    run(Case {
        keys: vec![("A", 0), ("B", 100)],
        want_state: "conflicted",
        ..case("the source's claim is newer", nodes)
    });
}

#[test]
fn s11_a_replica_elected_without_the_finalize_conflicts_and_is_held() {
    // B finalized slot 50 (bumped its epoch); A failed and A2 was elected without hearing
    // it, claiming the slot with a higher epoch. Two live masters claim it: the proxy holds
    // it and reports, rather than let Redis delete one side's keys as dirty.
    let mut nodes = base();
    get(&mut nodes, "B").slots.push((X, X));
    fail_over(&mut nodes, "A", "A2");
    run(Case {
        want_state: "conflicted",
        ..case("S11", nodes)
    });
}

#[test]
fn s12_and_s15_plan_as_s4() {
    // S12 (a key on both sides) and S15 (full coverage off) change nothing the authority
    // looks at: the plan is S4's, and its MoveKeys replaces (the source copy wins).
    let mut nodes = mid_migration();
    fail_over(&mut nodes, "A", "A2");
    run_with_and_without_memory(Case {
        keys: vec![("A2", 5), ("B", 4)],
        want_state: "broken",
        want_case: Some("S4/S5/S6"),
        want_plan: finish_from_a2_onto_b(),
        ..case("S12/S15", nodes)
    });
}

/// S1: the target went down mid-migration (failed by the cluster, no failover) and came
/// back with its importing state from nodes.conf. Whoever ran the migration gave up when
/// its MIGRATE failed: the proxy finishes it. Without the interruption, it is left alone.
#[test]
fn s1_a_migration_whose_target_came_back_is_finished() {
    let c = |interrupted| Case {
        keys: vec![("A", 5), ("B", 5)],
        interrupted,
        ..case("S1", mid_migration())
    };
    run(Case {
        want_state: "migrating",
        ..c(false)
    });
    run(Case {
        want_state: "broken",
        want_case: Some("resume"),
        want_plan: finish_onto_b(),
        ..c(true)
    });
    // Without memory of the target going down (a proxy started once it was back), the
    // migration looks like any live one: left to its driver, clients served through ASK.
    run(Case {
        journal: BTreeMap::new(),
        lineage: false,
        once: None,
        want_state: "migrating",
        ..c(false)
    });
}

/// A remembered migration closed by its own ends, both alive all along, with copies left on
/// the target: undone on purpose, left alone. Had an end failed meanwhile, the copies are
/// orphans of a cut migration, and it is finished.
#[test]
fn a_migration_its_ends_closed_is_not_finished_by_the_proxy() {
    let c = |interrupted| Case {
        keys: vec![("A", 80), ("B", 20)],
        interrupted,
        ..case("closed by its ends", base())
    };
    run(c(false));
    run(Case {
        want_state: "broken",
        want_case: Some("S7"),
        want_plan: finish_onto_b(),
        ..c(true)
    });
}

/// S11: B finalized slot 50 and was cut off before anyone heard; A died and A2, elected
/// without hearing B, claims the slot with none of its keys. B still answers the proxy.
fn s11() -> Vec<Node> {
    let mut nodes = base();
    let b = get(&mut nodes, "B");
    b.slots.push((X, X));
    b.failed = true;
    fail_over(&mut nodes, "A", "A2");
    nodes
}

#[test]
fn s11_the_keys_of_a_cut_off_target_are_copied_to_the_live_claimant() {
    // The keys are copied to A2, the live claimant.
    let copy = vec![CopyKeys {
        from: "B".into(),
        to: "A2".into(),
        slot: X,
    }];
    for journal in [journal_a_to_b(), BTreeMap::new()] {
        run(Case {
            journal,
            keys: vec![("B", 60), ("A2", 0)],
            want_state: "broken",
            want_case: Some("S11"),
            want_plan: copy.clone(),
            ..case("S11", s11())
        });
    }
    // On Valkey A2 still migrates the slot to B when it is elected: it is closed first, or
    // A2 would answer the copy's writes with ASK.
    let mut valkey = s11();
    get(&mut valkey, "A2").migrating.push((X, "B".into()));
    run(Case {
        keys: vec![("B", 60), ("A2", 0)],
        want_state: "broken",
        want_case: Some("S11"),
        want_plan: [
            vec![Stable {
                on: "A2".into(),
                slot: X,
            }],
            copy.clone(),
        ]
        .concat(),
        ..case("S11, the heir migrating", valkey)
    });
    // Once A2 has them, the slot is held until the partition heals: either side may win.
    run(Case {
        journal: BTreeMap::new(),
        keys: vec![("B", 60), ("A2", 60)],
        want_state: "broken",
        want_case: Some("S11"),
        ..case("S11 copied", s11())
    });
    // A copy cut short (A2 has some of them) is run again.
    run(Case {
        journal: BTreeMap::new(),
        keys: vec![("B", 60), ("A2", 20)],
        ours: true,
        want_state: "broken",
        want_case: Some("S11"),
        want_plan: copy.clone(),
        ..case("S11 copy cut short", s11())
    });
}

#[test]
fn a_failover_across_a_partition_is_not_s11() {
    // B is cut off and its own replica took its slots, lagging: B has keys B2 lacks. B2
    // is B's heir (the journal knows the shard): an ordinary failover, left to Redis.
    let mut nodes = base();
    fail_over(&mut nodes, "B", "B2");
    let b = get(&mut nodes, "B");
    b.dead = false;
    b.slots = vec![(100, 199)];
    run(Case {
        journal: BTreeMap::new(),
        keys: vec![("B", 5), ("B2", 0)],
        slot: 150,
        ..case("failover across a partition", nodes)
    });
}

/// S20: every node binds slot 50 to A but A, whose own table lost it (found by the
/// nemesis, seed 115: overlapping failovers and repairs of one slot). A serves it to no one
/// and, with full coverage, calls the whole cluster down. A claims it again.
#[test]
fn s20_a_master_that_lost_a_slot_from_its_own_table_claims_it_again() {
    let mut views = views(&base());
    let own = views.iter_mut().find(|(addr, _)| addr == "A:1").unwrap();
    let a = own.1.iter_mut().find(|l| l.id == "A").unwrap();
    a.slots = vec![(0, X - 1), (X + 1, 99)];
    let cluster = Cluster::new(&views);
    let none = BTreeMap::new();
    let (keys, slots) = (HashMap::new(), BTreeSet::new());
    let memory = Memory {
        migrations: &none,
        shards: &BTreeMap::new(),
        keys: &keys,
        settled_long_enough: &slots,
        repairing: &slots,
        interrupted: &slots,
        importer_takes_back: false,
    };
    let d = decide(&cluster, &memory, X);
    assert!(
        matches!(
            d.state,
            State::Broken {
                case: super::Case::Disowned,
                ..
            }
        ),
        "{:?}",
        d.state
    );
    assert_eq!(d.plan, vec![bind("A", "A")]);
    // Another slot of A's is stable, as before.
    assert!(matches!(
        decide(&cluster, &memory, 51).state,
        State::Stable { .. }
    ));
}
