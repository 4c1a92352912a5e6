//! The checker: reads a history and names every anomaly in it.
//!
//! - Registers (and transactions, read as one register per pair of keys): linearizable
//!   per key, by the Wing-Gong search with Lowe's memoization. A write whose outcome is
//!   unknown may take effect at any moment after it began, or never.
//! - Counters: each INCR's answer lies within what the counter could be by then (the
//!   INCRs acknowledged before it, plus those in doubt), and the final value within
//!   [acknowledged, acknowledged + unknown].
//! - Lists: the final list holds every acknowledged append once, in the order they were
//!   acknowledged (each list has one writer), nothing that was never appended; every read
//!   is a prefix of it holding every append acknowledged before the read began.
//! - Transactions: both keys of a pair always hold the same value (all or nothing).

use std::collections::{HashMap, HashSet};

use crate::history::{Call, Op, Outcome, Ret};

/// One thing the history shows that must not happen.
#[derive(Debug, Clone)]
pub struct Anomaly {
    pub kind: &'static str,
    pub key: String,
    pub detail: String,
    /// The operations involved.
    pub ops: Vec<Op>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub anomalies: Vec<Anomaly>,
    /// Acknowledged writes missing at the end (counter deficits, lost appends).
    pub lost: u64,
    /// Writes applied more often than they were sent (counter excess, repeated appends).
    pub duplicated: u64,
    /// Keys checked for linearizability, and keys the search gave up on.
    pub keys_checked: usize,
    pub keys_undecided: usize,
}

impl Verdict {
    pub fn count(&self, kind: &str) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }
}

/// Checks a whole history (the final reads included).
pub fn check(history: &[Op]) -> Verdict {
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_by_key(|(k, _)| *k);
    let mut verdict = Verdict::default();
    for (key, ops) in keys {
        let kind = ops
            .iter()
            .find(|o| !matches!(o.call, Call::Read | Call::Range | Call::ReadTxn))
            .map(|o| &o.call);
        match kind {
            Some(Call::Incr) => counter(key, &ops, &mut verdict),
            Some(Call::Push(_)) => list(key, &ops, &mut verdict),
            Some(Call::Txn(_)) => {
                pairs(key, &ops, &mut verdict);
                register(key, &ops, &mut verdict);
            }
            _ => register(key, &ops, &mut verdict),
        }
    }
    verdict
}

/// A register operation as the search sees it.
#[derive(Clone, Copy, Debug)]
struct RegOp {
    start: f64,
    /// `INFINITY` when its outcome is unknown.
    end: f64,
    write: Option<u64>,
    read: Option<Option<u64>>,
    /// May never have taken effect.
    optional: bool,
}

fn register(key: &str, ops: &[&Op], verdict: &mut Verdict) {
    let mut kept: Vec<&Op> = Vec::new();
    let mut reg = Vec::new();
    for op in ops {
        let r = match (&op.call, &op.outcome) {
            (Call::Write(v) | Call::Txn(v), Outcome::Ok(_)) => RegOp {
                start: op.start,
                end: op.end,
                write: Some(*v),
                read: None,
                optional: false,
            },
            (Call::Write(v) | Call::Txn(v), Outcome::Unknown(_)) => RegOp {
                start: op.start,
                end: f64::INFINITY,
                write: Some(*v),
                read: None,
                optional: true,
            },
            (Call::Read, Outcome::Ok(Ret::Value(v))) => RegOp {
                start: op.start,
                end: op.end,
                write: None,
                read: Some(*v),
                optional: false,
            },
            // A torn pair is reported by `pairs`; the register reads its first key.
            (Call::ReadTxn, Outcome::Ok(Ret::Pair(a, _))) => RegOp {
                start: op.start,
                end: op.end,
                write: None,
                read: Some(*a),
                optional: false,
            },
            _ => continue,
        };
        reg.push(r);
        kept.push(op);
    }
    verdict.keys_checked += 1;
    match linearizable(&reg, 20_000_000) {
        Search::Linearizable => {}
        Search::Undecided => verdict.keys_undecided += 1,
        Search::Not { blocked } => {
            // The key's whole history (a few hundred operations: keys are short-lived),
            // in the order the operations began.
            let mut involved: Vec<Op> = kept.iter().map(|op| (*op).clone()).collect();
            involved.sort_by(|a, b| a.start.total_cmp(&b.start));
            verdict.anomalies.push(Anomaly {
                kind: "not linearizable",
                key: key.to_string(),
                detail: format!(
                    "no order of the operations explains {:?} answered {:?} at {:.3}s",
                    kept[blocked].call, kept[blocked].outcome, kept[blocked].end
                ),
                ops: involved,
            });
        }
    }
}

#[derive(Debug, PartialEq)]
enum Search {
    Linearizable,
    /// `blocked`: the operation that could not be placed when the search got furthest.
    Not {
        blocked: usize,
    },
    /// The search used up its budget of steps.
    Undecided,
}

/// Wing and Gong's search for a linearization, with Lowe's cache of (operations
/// linearized, state) already explored.
fn linearizable(ops: &[RegOp], budget: u64) -> Search {
    let n = ops.len();
    // Events: a call and a return per operation, calls first at equal times (so that
    // operations that touch are taken as concurrent, never the reverse).
    let mut events: Vec<(f64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.start, false, i));
        events.push((op.end, true, i));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // A doubly linked list over the events: node k + 1 is event k, 0 the head, and
    // `tail` the end.
    let tail = events.len() + 1;
    let mut next: Vec<usize> = (1..=tail).chain([tail]).collect();
    let mut prev: Vec<usize> = std::iter::once(0).chain(0..tail).collect();
    let (mut call_node, mut ret_node) = (vec![0; n], vec![0; n]);
    for (k, &(_, ret, i)) in events.iter().enumerate() {
        if ret {
            ret_node[i] = k + 1;
        } else {
            call_node[i] = k + 1;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        let (p, q) = (prev[k], next[k]);
        next[p] = q;
        prev[q] = p;
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        let (p, q) = (prev[k], next[k]);
        next[p] = k;
        prev[q] = k;
    };
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut required = ops.iter().filter(|o| !o.optional).count();
    let mut state: Option<u64> = None;
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let (mut furthest, mut blocked) = (0, 0);
    let mut entry = next[0];
    let mut steps = 0u64;
    loop {
        if required == 0 {
            return Search::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Search::Undecided;
        }
        let (_, ret, i) = events[entry - 1];
        if !ret {
            let op = &ops[i];
            let after = match (op.write, op.read) {
                (Some(v), _) => Some(Some(v)),
                (None, Some(r)) => (r == state).then_some(state),
                (None, None) => Some(state),
            };
            if let Some(after) = after {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), after)) {
                    stack.push((i, state));
                    state = after;
                    lift(&mut next, &mut prev, ret_node[i]);
                    lift(&mut next, &mut prev, call_node[i]);
                    required -= usize::from(!op.optional);
                    entry = next[0];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = next[entry];
        } else {
            // An operation returned before it could be placed: undo the last choice.
            if stack.len() >= furthest {
                furthest = stack.len();
                blocked = i;
            }
            let Some((j, before)) = stack.pop() else {
                return Search::Not { blocked };
            };
            state = before;
            linearized[j / 64] &= !(1 << (j % 64));
            unlift(&mut next, &mut prev, call_node[j]);
            unlift(&mut next, &mut prev, ret_node[j]);
            required += usize::from(!ops[j].optional);
            entry = next[call_node[j]];
        }
    }
}

fn counter(key: &str, ops: &[&Op], verdict: &mut Verdict) {
    let (mut acked, mut unknown) = (0i64, 0i64);
    let mut incrs: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| o.call == Call::Incr)
        .collect();
    incrs.sort_by(|a, b| a.start.total_cmp(&b.start));
    for op in &incrs {
        match &op.outcome {
            Outcome::Ok(Ret::Int(n)) => {
                // One client, one INCR at a time: what it answered is one more than the
                // INCRs that took effect before it.
                if *n < acked + 1 || *n > acked + unknown + 1 {
                    let kind = if *n < acked + 1 {
                        "lost write"
                    } else {
                        "duplicated write"
                    };
                    verdict.anomalies.push(Anomaly {
                        kind,
                        key: key.to_string(),
                        detail: format!(
                            "INCR answered {n} after {acked} acknowledged and {unknown} unknown"
                        ),
                        ops: vec![(*op).clone()],
                    });
                }
                acked += 1;
            }
            Outcome::Unknown(_) => unknown += 1,
            _ => {}
        }
    }
    let last = ops
        .iter()
        .filter(|o| o.call == Call::Read)
        .max_by(|a, b| a.start.total_cmp(&b.start));
    let Some(Outcome::Ok(Ret::Value(value))) = last.map(|o| &o.outcome) else {
        return;
    };
    let value = value.unwrap_or(0) as i64;
    if value < acked {
        verdict.lost += (acked - value) as u64;
        verdict.anomalies.push(Anomaly {
            kind: "lost write",
            key: key.to_string(),
            detail: format!("ends at {value} after {acked} acknowledged INCRs"),
            ops: last.into_iter().map(|o| (*o).clone()).collect(),
        });
    }
    if value > acked + unknown {
        verdict.duplicated += (value - acked - unknown) as u64;
        verdict.anomalies.push(Anomaly {
            kind: "duplicated write",
            key: key.to_string(),
            detail: format!(
                "ends at {value} after {acked} acknowledged and {unknown} unknown INCRs"
            ),
            ops: last.into_iter().map(|o| (*o).clone()).collect(),
        });
    }
}

fn list(key: &str, ops: &[&Op], verdict: &mut Verdict) {
    let pushed: HashMap<u64, &Op> = ops
        .iter()
        .filter_map(|o| match o.call {
            Call::Push(v) => Some((v, *o)),
            _ => None,
        })
        .collect();
    let acked: Vec<&Op> = {
        let mut a: Vec<&Op> = pushed
            .values()
            .copied()
            .filter(|o| o.ok().is_some())
            .collect();
        a.sort_by(|x, y| x.start.total_cmp(&y.start));
        a
    };
    let reads: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| o.call == Call::Range && o.ok().is_some())
        .collect();
    let Some(last) = reads.iter().max_by(|a, b| a.start.total_cmp(&b.start)) else {
        return;
    };
    let Some(Ret::List(last_list)) = last.ok() else {
        return;
    };
    let mut anomaly = |kind, detail: String, ops: Vec<Op>| {
        verdict.anomalies.push(Anomaly {
            kind,
            key: key.to_string(),
            detail,
            ops,
        })
    };
    let mut seen = HashSet::new();
    let mut duplicated = 0;
    for v in last_list {
        if !seen.insert(*v) {
            duplicated += 1;
        }
        if !pushed.contains_key(v) {
            anomaly("never written", format!("{v} was never appended"), vec![]);
        }
    }
    if duplicated > 0 {
        anomaly(
            "duplicated write",
            format!("{duplicated} elements appear twice"),
            vec![(*last).clone()],
        );
    }
    let missing: Vec<Op> = acked
        .iter()
        .filter(|o| matches!(o.call, Call::Push(v) if !seen.contains(&v)))
        .map(|o| (*o).clone())
        .collect();
    let order: Vec<u64> = last_list.clone();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    if order != sorted {
        anomaly(
            "reordered",
            "the list is not in the order of its appends".into(),
            vec![(*last).clone()],
        );
    }
    for read in &reads {
        let Some(Ret::List(items)) = read.ok() else {
            continue;
        };
        if !last_list.starts_with(items) {
            anomaly(
                "not linearizable",
                format!(
                    "a read of {} elements at {:.3}s is not a prefix of the final list",
                    items.len(),
                    read.start
                ),
                vec![(*read).clone()],
            );
        }
        let had: HashSet<u64> = items.iter().copied().collect();
        let stale = acked
            .iter()
            .filter(|o| o.end < read.start)
            .any(|o| matches!(o.call, Call::Push(v) if !had.contains(&v)));
        if stale {
            anomaly(
                "stale read",
                format!(
                    "a read at {:.3}s misses an append acknowledged before it",
                    read.start
                ),
                vec![(*read).clone()],
            );
        }
    }
    verdict.lost += missing.len() as u64;
    verdict.duplicated += duplicated;
    if !missing.is_empty() {
        anomaly(
            "lost write",
            format!("{} acknowledged appends are missing", missing.len()),
            missing.into_iter().take(5).collect(),
        );
    }
}

fn pairs(key: &str, ops: &[&Op], verdict: &mut Verdict) {
    for op in ops {
        if let Some(Ret::Pair(a, b)) = op.ok() {
            if a != b {
                verdict.anomalies.push(Anomaly {
                    kind: "partial transaction",
                    key: key.to_string(),
                    detail: format!("the pair read {a:?} and {b:?}"),
                    ops: vec![(*op).clone()],
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, call: Call, start: f64, end: f64, outcome: Outcome) -> Op {
        Op {
            client: 0,
            key: key.into(),
            call,
            start,
            end,
            outcome,
            blamed: false,
        }
    }

    fn ok(ret: Ret) -> Outcome {
        Outcome::Ok(ret)
    }

    #[test]
    fn a_register_read_of_an_overwritten_value_is_not_linearizable() {
        let good = vec![
            op("r", Call::Write(1), 0.0, 1.0, ok(Ret::Done)),
            op("r", Call::Write(2), 0.5, 1.5, ok(Ret::Done)),
            op("r", Call::Read, 1.2, 1.4, ok(Ret::Value(Some(1)))),
            op("r", Call::Read, 2.0, 2.1, ok(Ret::Value(Some(2)))),
        ];
        assert!(check(&good).anomalies.is_empty());
        // Write 2 ended before the read began, and it read 1: stale.
        let stale = vec![
            op("r", Call::Write(1), 0.0, 1.0, ok(Ret::Done)),
            op("r", Call::Write(2), 1.1, 1.5, ok(Ret::Done)),
            op("r", Call::Read, 2.0, 2.1, ok(Ret::Value(Some(1)))),
        ];
        let verdict = check(&stale);
        assert_eq!(verdict.count("not linearizable"), 1, "{verdict:?}");
        // A read of a value never written.
        let phantom = vec![op("r", Call::Read, 0.0, 0.1, ok(Ret::Value(Some(9))))];
        assert_eq!(check(&phantom).count("not linearizable"), 1);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let history = vec![
            op("r", Call::Write(1), 0.0, 1.0, ok(Ret::Done)),
            op(
                "r",
                Call::Write(2),
                1.0,
                1.2,
                Outcome::Unknown("lost".into()),
            ),
            op("r", Call::Read, 2.0, 2.1, ok(Ret::Value(Some(1)))),
            op("r", Call::Read, 3.0, 3.1, ok(Ret::Value(Some(2)))),
        ];
        assert!(check(&history).anomalies.is_empty());
        // But once it was seen, the older value cannot come back.
        let mut back = history.clone();
        back.push(op("r", Call::Read, 4.0, 4.1, ok(Ret::Value(Some(1)))));
        assert_eq!(check(&back).count("not linearizable"), 1);
    }

    #[test]
    fn counters_catch_lost_and_doubled_increments() {
        let incr = |n, s| op("c", Call::Incr, s, s + 0.1, ok(Ret::Int(n)));
        let read = |v| op("c", Call::Read, 10.0, 10.1, ok(Ret::Value(Some(v))));
        let good = vec![incr(1, 0.0), incr(2, 1.0), incr(3, 2.0), read(3)];
        assert!(check(&good).anomalies.is_empty());
        // The third answer went back: the second INCR was lost.
        let lost = vec![incr(1, 0.0), incr(2, 1.0), incr(2, 2.0), read(2)];
        let verdict = check(&lost);
        assert_eq!(verdict.count("lost write"), 2, "{verdict:?}");
        assert_eq!(verdict.lost, 1);
        let doubled = vec![incr(1, 0.0), incr(3, 1.0), read(3)];
        let verdict = check(&doubled);
        assert_eq!(verdict.count("duplicated write"), 2, "{verdict:?}");
        // An INCR in doubt may have run, once.
        let doubt = vec![
            incr(1, 0.0),
            op("c", Call::Incr, 1.0, 1.1, Outcome::Unknown("?".into())),
            incr(3, 2.0),
            read(3),
        ];
        assert!(check(&doubt).anomalies.is_empty());
    }

    #[test]
    fn lists_catch_lost_repeated_and_reordered_appends_and_stale_reads() {
        let push = |v, s| op("l", Call::Push(v), s, s + 0.1, ok(Ret::Done));
        let range =
            |items: &[u64], s| op("l", Call::Range, s, s + 0.1, ok(Ret::List(items.to_vec())));
        let good = vec![
            push(1, 0.0),
            range(&[1], 0.5),
            push(2, 1.0),
            range(&[1, 2], 2.0),
        ];
        assert!(check(&good).anomalies.is_empty());
        let lost = vec![push(1, 0.0), push(2, 1.0), range(&[2], 2.0)];
        let verdict = check(&lost);
        assert_eq!(verdict.lost, 1);
        assert_eq!(verdict.count("lost write"), 1);
        let twice = vec![push(1, 0.0), push(2, 1.0), range(&[1, 2, 2], 2.0)];
        assert_eq!(check(&twice).duplicated, 1);
        let reordered = vec![push(1, 0.0), push(2, 1.0), range(&[2, 1], 2.0)];
        assert_eq!(check(&reordered).count("reordered"), 1);
        let stale = vec![
            push(1, 0.0),
            push(2, 1.0),
            range(&[1], 1.5),
            range(&[1, 2], 2.0),
        ];
        assert_eq!(check(&stale).count("stale read"), 1);
    }

    #[test]
    fn a_torn_transaction_is_reported() {
        let history = vec![
            op("t", Call::Txn(1), 0.0, 0.1, ok(Ret::Done)),
            op("t", Call::ReadTxn, 1.0, 1.1, ok(Ret::Pair(Some(1), None))),
        ];
        assert_eq!(check(&history).count("partial transaction"), 1);
    }

    #[test]
    fn a_long_concurrent_history_is_decided() {
        // Six clients on one key, 300 operations: the search must finish quickly.
        let mut history = Vec::new();
        let mut last = None;
        for i in 0..300u64 {
            let s = i as f64 * 0.01;
            if i % 3 == 0 {
                history.push(op("r", Call::Write(i), s, s + 0.05, ok(Ret::Done)));
                last = Some(i);
            } else {
                history.push(op(
                    "r",
                    Call::Read,
                    s + 0.049,
                    s + 0.06,
                    ok(Ret::Value(last)),
                ));
            }
        }
        let verdict = check(&history);
        assert_eq!(verdict.keys_undecided, 0);
        assert!(verdict.anomalies.is_empty(), "{:?}", verdict.anomalies);
    }
}
