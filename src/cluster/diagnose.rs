//! `slotguard check` and `slotguard repair`: the authority run once against a cluster,
//! without serving clients.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::authority::{Decision, Orphan, State, Step};
use super::heal::{addresses, assess, Strays};
use super::journal::Journal;
use super::nodes::NodeLine;
use super::repair;
use super::topology::collect_views;
use super::Error;
use crate::config::Config;

/// Most rounds of repair in one `slotguard repair`.
const MAX_ROUNDS: usize = 32;

/// Every node reachable from the seeds, and their views.
pub(crate) async fn discover(config: &Config) -> Result<Vec<(String, Vec<NodeLine>)>, Error> {
    if config.seeds.is_empty() {
        let why = "no seeds: give --seed HOST:PORT or `seeds` in the config file";
        return Err(Error::Plan(why.into()));
    }
    let mut known = config.seeds.clone();
    loop {
        let views = collect_views(&config.dial(), &known)
            .await
            .ok_or_else(|| Error::NotReady(format!("no seed answered: {}", known.join(", "))))?;
        let before = known.len();
        for line in views.iter().flat_map(|(_, lines)| lines) {
            if !line.addr.is_empty() && !known.contains(&line.addr) {
                known.push(line.addr.clone());
            }
        }
        if known.len() == before {
            return Ok(views);
        }
    }
}

/// One look at the cluster: views and the authority's decisions (grace already passed:
/// the operator asked).
async fn look(
    config: &Config,
    journal: &Mutex<Journal>,
) -> Result<(Vec<(String, Vec<NodeLine>)>, Vec<Decision>), Error> {
    let views = discover(config).await?;
    let strays = &mut Strays::default();
    let dial = config.dial();
    let takes_back = match views.first() {
        Some((addr, _)) => match crate::client::query(addr, &["INFO", "server"], &dial).await {
            Ok(crate::protocol::Value::Bulk(info)) => {
                super::topology::importer_takes_back(&String::from_utf8_lossy(&info))
            }
            _ => false,
        },
        None => false,
    };
    let (decisions, _) = assess(&views, journal, |c| c.clone(), &dial, strays, takes_back).await;
    Ok((views, decisions))
}

/// A step as an operator reads it.
pub fn describe(step: &Step, addrs: &HashMap<String, String>) -> String {
    let at = |id: &str| {
        addrs.get(id).map_or(id.to_string(), |a| {
            format!("{a} ({})", &id[..id.len().min(8)])
        })
    };
    match step {
        Step::Bind { on, slot, owner } => {
            format!("on {}: CLUSTER SETSLOT {slot} NODE {owner}", at(on))
        }
        Step::Importing { on, slot, source } => {
            format!("on {}: CLUSTER SETSLOT {slot} IMPORTING {source}", at(on))
        }
        Step::Migrating { on, slot, target } => {
            format!("on {}: CLUSTER SETSLOT {slot} MIGRATING {target}", at(on))
        }
        Step::Stable { on, slot } => format!("on {}: CLUSTER SETSLOT {slot} STABLE", at(on)),
        Step::MoveKeys {
            from,
            to,
            slot,
            replace,
        } => format!(
            "move every key of slot {slot} from {} to {}{}",
            at(from),
            at(to),
            if *replace {
                " (MIGRATE ... REPLACE)"
            } else {
                " (MIGRATE, no REPLACE)"
            }
        ),
        Step::MigrateSlots { on, ranges, target } => format!(
            "on {}: CLUSTER MIGRATESLOTS SLOTSRANGE {} NODE {target}, and wait for it",
            at(on),
            ranges
                .iter()
                .map(|(a, b)| format!("{a} {b}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Step::CopyKeys { from, to, slot } => format!(
            "copy every key of slot {slot} from {} to {} (DUMP there, RESTORE here, no REPLACE)",
            at(from),
            at(to)
        ),
    }
}

/// What slotguard would need to know to settle a conflict on its own.
const CONFLICT_NEEDS: &str = "which side is newer. Give the journal of a proxy that watched the migration (--state-dir), or settle it by hand: the keys of the slot on each claimant (CLUSTER COUNTKEYSINSLOT), then CLUSTER SETSLOT <slot> NODE <id> on every master, after moving the keys to keep with MIGRATE";

/// A readable report of the decisions; orphaned slots are folded into ranges.
pub fn report(views: &[(String, Vec<NodeLine>)], decisions: &[Decision]) -> String {
    let addrs = addresses(views);
    let mut out = String::new();
    let masters = views
        .iter()
        .filter(|(_, l)| l.iter().any(|n| n.myself && n.master))
        .count();
    let _ = writeln!(
        out,
        "{} nodes answered, {masters} of them masters",
        views.len()
    );
    let mut orphaned: Vec<(u16, u16, &Orphan)> = Vec::new();
    for d in decisions {
        match &d.state {
            State::Orphaned { why } => match orphaned.last_mut() {
                Some((_, end, w)) if *end + 1 == d.slot && *w == why => *end = d.slot,
                _ => orphaned.push((d.slot, d.slot, why)),
            },
            State::Broken { case, why } => {
                let _ = writeln!(out, "slot {}: broken ({case}): {why}", d.slot);
                for (i, step) in d.plan.iter().enumerate() {
                    let _ = writeln!(out, "  {}. {}", i + 1, describe(step, &addrs));
                }
            }
            State::Migrating { from, to } => {
                let _ = writeln!(
                    out,
                    "slot {}: migrating {} -> {} (left to whoever runs it)",
                    d.slot,
                    addrs.get(from).unwrap_or(from),
                    addrs.get(to).unwrap_or(to)
                );
            }
            State::Conflicted { claims } => {
                let _ = writeln!(
                    out,
                    "slot {}: conflicted: claimed by {}",
                    d.slot,
                    claims.join(", ")
                );
                let _ = writeln!(out, "  needs: {CONFLICT_NEEDS}");
            }
            State::Stable { .. } => {}
        }
    }
    for (a, b, why) in orphaned {
        let range = if a == b {
            format!("slot {a}")
        } else {
            format!("slots {a}-{b}")
        };
        let _ = writeln!(out, "{range}: orphaned: {why}");
        let _ = writeln!(out, "  needs: {}", why.needs());
    }
    if decisions.is_empty() {
        let _ = writeln!(
            out,
            "healthy: every slot has one live owner and no migration is open"
        );
    }
    out
}

/// `slotguard check`: prints the diagnosis; true when healthy.
pub async fn check(config: &Config) -> Result<bool, Error> {
    let journal = Mutex::new(Journal::open(config.state_dir.as_deref())?);
    let (views, decisions) = look(config, &journal).await?;
    print!("{}", report(&views, &decisions));
    Ok(decisions.is_empty())
}

/// `slotguard repair`: runs the plans until nothing is left to repair; with `dry_run`,
/// prints the plans only. True when the cluster ends healthy.
pub async fn repair(config: &Config, dry_run: bool) -> Result<bool, Error> {
    let journal = Mutex::new(Journal::open(config.state_dir.as_deref())?);
    for _ in 0..MAX_ROUNDS {
        let (views, decisions) = look(config, &journal).await?;
        let next = decisions.iter().find(|d| !d.plan.is_empty());
        let Some(d) = next.filter(|_| !dry_run) else {
            print!("{}", report(&views, &decisions));
            return Ok(decisions.is_empty());
        };
        println!("repairing slot {}", d.slot);
        let dial = config
            .dial()
            .with_limit(config.connect_timeout.max(Duration::from_secs(5)));
        if let Err(e) = repair::run(
            d.slot,
            &d.plan,
            &addresses(&views),
            &journal,
            &dial,
            &repair::Pace::default(),
        )
        .await
        {
            // Often a node has not heard the news yet (gossip); every step is idempotent,
            // so look again and plan from what the cluster shows then.
            println!("  stopped: {e}; looking again");
        }
        // Let the cluster spread the new configuration before looking again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(Error::NotReady(format!(
        "still repairing after {MAX_ROUNDS} rounds; run again or look at the cluster"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsettled_slots_say_what_would_settle_them() {
        let decisions = [
            Decision {
                slot: 7,
                state: State::Conflicted {
                    claims: vec!["a".into(), "b".into()],
                },
                plan: vec![],
            },
            Decision {
                slot: 8,
                state: State::Orphaned {
                    why: Orphan::TargetShardDown { target: "b".into() },
                },
                plan: vec![],
            },
        ];
        let text = report(&[], &decisions);
        assert!(
            text.contains("slot 7: conflicted: claimed by a, b\n  needs: which side is newer"),
            "{text}"
        );
        assert!(
            text.contains("slot 8: orphaned: the target shard of the migration (b) has no live master\n  needs: the failed master back"),
            "{text}"
        );
    }
}
