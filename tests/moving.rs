//! `slotguard migrate`, `rebalance` and `drain`, run as the binary against real clusters,
//! with clients writing through a proxy all along, and with the source, the target or
//! slotguard itself killed mid-way.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_unharmed, keys_in_slots, writers, Harness};
use slotguard::config::Ack;
use slotguard::localcluster::Options;

/// The binary with `args`, against the cluster of `h`.
fn slotguard(h: &Harness, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_slotguard"));
    let seed = h.cluster.nodes.iter().find(|n| n.pid().is_some());
    cmd.args(args)
        .args(["--seed", &seed.expect("a running node").addr()])
        .env("RUST_LOG", "slotguard=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs it to the end: its exit code, and what it printed (stdout, then stderr).
async fn finish(mut cmd: tokio::process::Command) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("slotguard finished")
        .expect("slotguard ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// INCR on `keys` until `stop`, each acknowledged increment counted: a lost or doubled
/// write shows as a counter that does not match.
fn counters(
    url: String,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(HashMap<String, i64>, Vec<String>)> {
    tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Duration::from_secs(30));
        let mut c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let mut acked: HashMap<String, i64> = HashMap::new();
        let mut errors = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = &keys[i % keys.len()];
            match redis::cmd("INCR").arg(key).query_async::<i64>(&mut c).await {
                Ok(_) => *acked.entry(key.clone()).or_default() += 1,
                Err(e) => {
                    errors.push(format!("INCR {key}: {e}"));
                    // A proxy gone (the test failed) errs at once: yield, so that the
                    // runtime can shut down rather than hang.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            i += 1;
        }
        (acked, errors)
    })
}

/// Every counter holds exactly the increments acknowledged.
async fn counters_exact(h: &Harness, acked: &HashMap<String, i64>) {
    let mut c = h.client().await;
    for (key, n) in acked {
        let got: i64 = redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(got, *n, "{key}: {n} increments acknowledged");
    }
}

/// Writes every key once, through the proxy (2 KB values on Valkey, so that an atomic
/// migration of them lasts long enough to be cut).
async fn seed(h: &Harness, keys: &[String]) {
    let value = match slotguard::localcluster::is_valkey() {
        true => "v".repeat(2048),
        false => "seed".to_string(),
    };
    let mut c = h.client().await;
    for chunk in keys.chunks(500) {
        let mut mset = redis::cmd("MSET");
        for k in chunk {
            mset.arg(k).arg(&value);
        }
        let () = mset.query_async(&mut c).await.unwrap();
    }
}

async fn dbsize(addr: &str) -> i64 {
    common::call(addr, &["DBSIZE"]).await.as_int().unwrap()
}

/// Waits until the node at `addr` holds `n` keys: keys are on their way to it.
async fn wait_for_keys(addr: &str, n: i64) {
    for _ in 0..1200 {
        if dbsize(addr).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never held {n} keys");
}

/// How a test moves slots it means to cut short: on Valkey through MIGRATESLOTS (a rate
/// limit would mean MIGRATE), elsewhere 10 keys a MIGRATE, one at a time, at `rate` keys
/// a second (the other tests move with the default pipeline of MIGRATEs).
fn paced(rate: &str) -> Vec<&str> {
    match slotguard::localcluster::is_valkey() {
        true => vec![],
        false => vec![
            "--batch",
            "10",
            "--pipeline",
            "1",
            "--max-keys-per-sec",
            rate,
        ],
    }
}

/// Waits until a move from `source` to `target` is under way: on Valkey, the source
/// lists an atomic migration still running; elsewhere, `target` holds `n` keys.
async fn under_way(source: &str, target: &str, n: i64) {
    if !slotguard::localcluster::is_valkey() {
        return wait_for_keys(target, n).await;
    }
    for _ in 0..6000 {
        let jobs = common::call(source, &["CLUSTER", "GETSLOTMIGRATIONS"]).await;
        let running = jobs.as_array().unwrap_or_default().iter().any(|job| {
            let fields: Vec<String> = (job.as_array().unwrap_or_default().iter())
                .map(|f| f.as_str().unwrap_or_default().to_string())
                .collect();
            let state = fields
                .iter()
                .position(|f| f == "state")
                .map(|i| &fields[i + 1]);
            state.is_some_and(|s| !matches!(s.as_str(), "success" | "failed" | "cancelled"))
        });
        if running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no slot migration ran on {source}");
}

/// Masters' slot counts, by address, as the first running node sees them.
async fn slot_counts(h: &Harness) -> HashMap<String, usize> {
    let node = h.cluster.nodes.iter().find(|n| n.pid().is_some()).unwrap();
    let text = common::call(&node.addr(), &["CLUSTER", "NODES"]).await;
    let lines = slotguard::cluster::nodes::parse(text.as_str().unwrap(), "").unwrap();
    lines
        .iter()
        .filter(|l| l.master && !l.fail)
        .map(|l| {
            let n = l.slots.iter().map(|&(a, b)| (b - a + 1) as usize).sum();
            (l.addr.clone(), n)
        })
        .collect()
}

/// Waits until `redis-cli --cluster check` is clean (the last gossip may be on its way).
async fn check_clean(h: &Harness) {
    let mut last = String::new();
    for _ in 0..50 {
        match h.cluster_check() {
            Ok(()) => return,
            Err(text) => last = text,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cluster check not clean:\n{last}");
}

/// 500 slots with keys move under writers and counters: nobody sees an error, every
/// acknowledged write reads back, and each slot ends on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slots_move_under_load() {
    let h = Harness::start(3, 1).await;
    let target = h.cluster.nodes[2].addr();
    let keys = keys_in_slots("mv", 0..=499, 3000);
    seed(&h, &keys).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(h.url(), 4, keys.clone(), stop.clone()));
    let counted = counters(h.url(), keys_in_slots("ctr", 0..=499, 50), stop.clone());
    let (code, out) = finish(slotguard(
        &h,
        &["migrate", "--slots", "0-499", "--to", &target],
    ))
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("500 slots to move"), "{out}");
    assert!(out.contains("moved 500 slots"), "{out}");
    if slotguard::localcluster::is_valkey() {
        assert!(out.contains("CLUSTER MIGRATESLOTS"), "{out}");
    }
    let report = load.await.unwrap();
    let (acked, errors) = counted.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_unharmed(&h, &report, 100, false).await;
    counters_exact(&h, &acked).await;
    for slot in [0, 250, 499] {
        assert_eq!(h.owner_of(slot).await, target);
    }
    for k in keys.iter().step_by(97) {
        let owner = common::call(&target, &["EXISTS", k]).await;
        assert_eq!(owner.as_int(), Some(1), "{k} is on the target");
    }
    check_clean(&h).await;
    // Run again: nothing is left to move.
    let (code, out) = finish(slotguard(
        &h,
        &["migrate", "--slots", "0-499", "--to", &target],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 slots to move"), "{out}");
}

/// kill -9 of slotguard mid-way, then the same command: it resumes, and the cluster ends
/// clean with every key in place. Killed at a step picked at random (`kill_point`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_migrate_resumes_where_it_stopped() {
    let h = Harness::start(3, 1).await;
    let target = h.cluster.nodes[1].addr();
    let keys = keys_in_slots("rs", 0..=59, 3000);
    seed(&h, &keys).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(h.url(), 2, keys.clone(), stop.clone()));
    let counted = counters(h.url(), keys_in_slots("rc", 0..=59, 20), stop.clone());
    let source = h.cluster.nodes[0].addr();
    let args = [
        &["migrate", "--slots", "0-59", "--to", &target][..],
        &paced("2000"),
    ]
    .concat();
    let base = dbsize(&target).await;
    let mut first = slotguard(&h, &args).spawn().unwrap();
    // Killed at a step picked at random (see `kill_point`).
    let kill_at = kill_point(keys.len() as i64);
    eprintln!("REPORT | slotguard migrate killed once the target held {kill_at} keys");
    under_way(&source, &target, base + kill_at).await;
    first.start_kill().unwrap(); // SIGKILL
    let _ = first.wait().await;
    let (code, out) = finish(slotguard(&h, &args)).await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, 0, "{out}");
    let report = load.await.unwrap();
    let (acked, errors) = counted.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_unharmed(&h, &report, 100, false).await;
    counters_exact(&h, &acked).await;
    for slot in [0, 30, 59] {
        assert_eq!(h.owner_of(slot).await, target);
    }
    check_clean(&h).await;
}

/// The source, then in another run the target, killed (kill -9) mid-way: the proxy in
/// front finishes the cut slot, the cluster fails the node over, and the migration goes on
/// (to the target's replica, promoted, when the target died). Every key moved before the
/// target died is on that replica: each batch was waited for.
///
/// Each run kills at a step picked at random: once the target holds some number of the
/// 2,000 keys, from 100 (the first slots' keys) to all of them (the finalize, or just
/// after). `SLOTGUARD_KILL_AT=<keys>` picks it; the REPORT line says which it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_survives_its_source_or_target_killed() {
    for victim in ["source", "target"] {
        // Writes acknowledged once replicated, and INCR sent so that it runs once: a
        // killed master loses none, and none is in doubt.
        let options = Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            ..Options::default()
        };
        let h = Harness::start_with(options, |c| c.ack = Ack::Replicated).await;
        let (source, target) = (0, 2);
        let keys = keys_in_slots("kv", 0..=39, 2000);
        seed(&h, &keys).await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(writers(h.url(), 2, keys.clone(), stop.clone()));
        let counted = counters(h.url(), keys_in_slots("kc", 0..=39, 20), stop.clone());
        let target_addr = h.cluster.nodes[target].addr();
        let source_addr = h.cluster.nodes[source].addr();
        let args = [
            &["migrate", "--slots", "0-39", "--to", &target_addr][..],
            &paced("1500"),
        ]
        .concat();
        // The seed must outlive the fault: the target's replica (node 5) is never killed.
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_slotguard"));
        cmd.args(args)
            .args([
                "--seed",
                &h.cluster.nodes[5].addr(),
                "--seed",
                &h.cluster.nodes[1].addr(),
            ])
            .env("RUST_LOG", "slotguard=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let base = dbsize(&target_addr).await;
        let run = tokio::spawn(finish(cmd));
        let kill_at = kill_point(keys.len() as i64);
        under_way(&source_addr, &target_addr, base + kill_at).await;
        let mut h = h;
        let killed = if victim == "source" { source } else { target };
        h.cluster.nodes[killed].kill();
        // With `ack = "replicated"` the promoted replica holds its writes until it has a
        // replica again: the killed node comes back as one, as an operator's would.
        h.cluster.wait_promoted(killed).await.unwrap();
        h.cluster.restart(killed).await.unwrap();
        let (code, out) = run.await.unwrap();
        let promoted = match victim {
            "target" => h.cluster.nodes[target + 3].addr(),
            _ => target_addr.clone(),
        };
        if code != 0 {
            // Out of attempts while the cluster failed the node over: the same command
            // (to the shard's new master) finishes it.
            let (code, again) = finish(slotguard(
                &h,
                &["migrate", "--slots", "0-39", "--to", &promoted],
            ))
            .await;
            assert_eq!(code, 0, "{victim}: first run:\n{out}\nsecond run:\n{again}");
        }
        stop.store(true, Ordering::Relaxed);
        let report = load.await.unwrap();
        eprintln!(
            "REPORT | migrate, {victim} killed once the target held {kill_at} keys | first run exit {code} | writes {} | client errors {} | longest stall {:.2}s",
            report.writes,
            report.errors.len(),
            report.longest.as_secs_f64()
        );
        let (acked, errors) = counted.await.unwrap();
        assert!(errors.is_empty(), "{victim}: {errors:?}");
        // How many writes get in is up to the clock: with the source killed, each writer
        // waits on the first key of its shard until the promoted replica has a replica of
        // its own again (`ack = "replicated"`), and the migration may end soon after. Seen
        // from 13 to 3,000; what counts is that they ran and lost nothing.
        assert_unharmed(&h, &report, 0, false).await;
        counters_exact(&h, &acked).await;
        for slot in [0, 20, 39] {
            assert_eq!(h.owner_of(slot).await, promoted, "{victim}: slot {slot}");
        }
        check_clean(&h).await;
    }
}

/// How many of `total` moved keys the target holds when a node is killed:
/// `SLOTGUARD_KILL_AT`, else picked at random from 100 to `total`.
fn kill_point(total: i64) -> i64 {
    if let Some(n) = std::env::var("SLOTGUARD_KILL_AT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as i64;
    100 + nanos % (total - 99)
}

/// A fourth master added empty, a rebalance to four, and a drain back to three: the slot
/// counts after each, and every key in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_to_four_masters_and_drain_back_to_three() {
    let mut h = Harness::start(3, 0).await;
    let keys = keys_in_slots("rb", 0..=16383, 2000);
    let mut c = h.client().await;
    for chunk in keys.chunks(500) {
        let mut mset = redis::cmd("MSET");
        for k in chunk {
            mset.arg(k).arg(k);
        }
        let () = mset.query_async(&mut c).await.unwrap();
    }
    let added = h.cluster.add_master().await.unwrap();
    let fourth = h.cluster.nodes[added].addr();
    // The plan alone changes nothing.
    let (code, plan) = finish(slotguard(&h, &["rebalance", "--dry-run"])).await;
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("4096 slots to move"), "{plan}");
    assert_eq!(slot_counts(&h).await.get(&fourth), Some(&0));
    let fast = ["--batch", "500"];
    let (code, out) = finish(slotguard(&h, &[&["rebalance"][..], &fast].concat())).await;
    assert_eq!(code, 0, "{out}");
    let counts = slot_counts(&h).await;
    assert!(
        counts.len() == 4 && counts.values().all(|&n| n == 4096),
        "{counts:?}"
    );
    let (code, out) = finish(slotguard(&h, &[&["drain", &fourth][..], &fast].concat())).await;
    assert_eq!(code, 0, "{out}");
    // Emptied, Redis makes it a replica of the master that took its last slot.
    let counts = slot_counts(&h).await;
    assert_eq!(counts.get(&fourth).copied().unwrap_or(0), 0, "{counts:?}");
    let sizes: Vec<usize> = counts.values().copied().filter(|&n| n > 0).collect();
    assert_eq!(sizes.len(), 3, "{counts:?}");
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{counts:?}"
    );
    let mut c = h.client().await;
    for k in &keys {
        let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(v.as_deref(), Some(k.as_str()));
    }
    check_clean(&h).await;
}

/// A target that imports a slot before it has heard who owns it (a master just added,
/// with gossip behind) never learns the owner while the slot is open, and answers the keys'
/// RESTORE with CLUSTERDOWN. Made here on purpose: the target forgets the owner and marks
/// the slot importing in one MULTI, so no gossip lands between. The move binds the slot on
/// the target first and goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_has_not_heard_the_owner_is_told_first() {
    let h = Harness::start(3, 0).await;
    let slot = 100;
    let keys = keys_in_slots("uh", slot..=slot, 50);
    seed(&h, &keys).await;
    let source = h.owner_of(slot).await;
    let target = (h.cluster.nodes.iter().map(|n| n.addr()))
        .find(|a| *a != source)
        .unwrap();
    let source_id = common::call(&source, &["CLUSTER", "MYID"]).await;
    let source_id = source_id.as_str().unwrap().to_string();
    let mut t = h.direct(&target).await;
    let () = redis::pipe()
        .atomic()
        .cmd("CLUSTER")
        .arg("DELSLOTS")
        .arg(slot)
        .ignore()
        .cmd("CLUSTER")
        .arg(&["SETSLOT", &slot.to_string(), "IMPORTING", &source_id])
        .ignore()
        .query_async(&mut t)
        .await
        .unwrap();
    let (code, out) = finish(slotguard(
        &h,
        &["migrate", "--slots", &slot.to_string(), "--to", &target],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("moved 1 slots and 50 keys"), "{out}");
    assert_eq!(h.owner_of(slot).await, target);
    assert_eq!(dbsize(&target).await, 50);
    let mut c = h.client().await;
    for k in &keys {
        let n: i64 = redis::cmd("EXISTS")
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 1, "{k}");
    }
    check_clean(&h).await;
}

/// On a terminal the progress is a bar redrawn in place, with slots, keys, rate and ETA;
/// bad input is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_as_a_bar_on_a_terminal() {
    let h = Harness::start(3, 0).await;
    let target = h.cluster.nodes[1].addr();
    let keys = keys_in_slots("pb", 0..=19, 400);
    let mut c = h.client().await;
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg("v");
    }
    let () = mset.query_async(&mut c).await.unwrap();
    // `script` runs the command under a pseudo-terminal.
    let line = format!(
        "{} migrate --seed {} --slots 0-19 --to {target} --batch 5 --max-keys-per-sec 400",
        env!("CARGO_BIN_EXE_slotguard"),
        h.cluster.nodes[0].addr()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\r\x1b[2K["), "redrawn in place: {text:?}");
    assert!(text.contains("20/20 slots, 400 keys"), "{text:?}");
    assert!(text.contains("keys/s, ETA"), "{text:?}");
    assert!(text.contains("#"), "{text:?}");
    for (args, says) in [
        (
            vec!["migrate", "--slots", "0-99999", "--to", &target],
            "is not a slot",
        ),
        (
            vec!["migrate", "--slots", "1", "--to", "10.9.9.9:1"],
            "no live master",
        ),
        (vec!["rebalance", "--weight", "x"], "expected NODE=N"),
    ] {
        let (code, out) = finish(slotguard(&h, &args)).await;
        assert_ne!(code, 0);
        assert!(out.contains(says), "{args:?}: {out}");
    }
}

/// `slotguard migrate` against `redis-cli --cluster reshard` on the same 500 slots and
/// 100,000 keys, in one run: redis-cli moves them from the first master to the third,
/// slotguard moves them back, writers through the proxy all along. Prints keys a second
/// and the longest stall a writer felt, each as slotguard over redis-cli. A benchmark,
/// not a test: `cargo test --release --test moving -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn compare_with_redis_cli_reshard() {
    let h = Harness::start(3, 1).await;
    let (first, third) = (h.cluster.nodes[0].addr(), h.cluster.nodes[2].addr());
    let keys = keys_in_slots("cmp", 0..=499, 100_000);
    seed(&h, &keys).await;
    let phase = |name: &'static str, cmd: tokio::process::Command| {
        let (url, keys) = (h.url(), keys.clone());
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let load = tokio::spawn(writers(url, 4, keys, stop.clone()));
            let started = std::time::Instant::now();
            let (code, out) = finish(cmd).await;
            let took = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            let report = load.await.unwrap();
            assert_eq!(code, 0, "{name}: {out}");
            assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
            (took, report.longest)
        }
    };
    let from = common::node_id(&first).await;
    let to = common::node_id(&third).await;
    let mut cli = tokio::process::Command::new("redis-cli");
    cli.args(["--cluster", "reshard", &first, "--cluster-from", &from])
        .args([
            "--cluster-to",
            &to,
            "--cluster-slots",
            "500",
            "--cluster-yes",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (cli_took, cli_stall) = phase("redis-cli", cli).await;
    assert_eq!(h.owner_of(499).await, third, "redis-cli moved slots 0-499");
    check_clean(&h).await;
    let ours = slotguard(&h, &["migrate", "--slots", "0-499", "--to", &first]);
    let (our_took, our_stall) = phase("slotguard", ours).await;
    assert_eq!(h.owner_of(499).await, first);
    check_clean(&h).await;
    let rate = |took: Duration| keys.len() as f64 / took.as_secs_f64();
    eprintln!(
        "REPORT | 500 slots, {} keys | redis-cli reshard {:.0} keys/s, longest stall {:.3}s | slotguard migrate {:.0} keys/s, longest stall {:.3}s | ratio keys/s {:.2}, stall {:.2}",
        keys.len(),
        rate(cli_took),
        cli_stall.as_secs_f64(),
        rate(our_took),
        our_stall.as_secs_f64(),
        rate(our_took) / rate(cli_took),
        our_stall.as_secs_f64() / cli_stall.as_secs_f64(),
    );
}

/// Valkey 9: an atomic slot migration someone else started, with writers and counters
/// through the proxy all along, and a second proxy started while it runs (its first look
/// at the target finds keys of slots the target does not own yet, which are not strays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_atomic_migration_is_served_through() {
    if !slotguard::localcluster::is_valkey() {
        return; // Redis 7 has no atomic slot migration
    }
    let h = Harness::start(3, 1).await;
    let (source, target) = (h.cluster.nodes[0].addr(), h.cluster.nodes[2].addr());
    let keys = keys_in_slots("asm", 0..=999, 20_000);
    seed(&h, &keys).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(h.url(), 4, keys.clone(), stop.clone()));
    let counted = counters(h.url(), keys_in_slots("asc", 0..=999, 50), stop.clone());
    let target_id = common::node_id(&target).await;
    let started = common::call(
        &source,
        &[
            "CLUSTER",
            "MIGRATESLOTS",
            "SLOTSRANGE",
            "0",
            "999",
            "NODE",
            &target_id,
        ],
    )
    .await;
    assert_eq!(started.as_str(), Some("OK"), "{started:?}");
    let second = common::start_proxy(slotguard::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: vec![h.cluster.nodes[1].addr()],
        ..slotguard::config::Config::default()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while h.owner_of(999).await != target || h.owner_of(0).await != target {
        assert!(std::time::Instant::now() < deadline, "the migration ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    let (acked, errors) = counted.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_unharmed(&h, &report, 100, false).await;
    counters_exact(&h, &acked).await;
    // The second proxy reads what the writers last wrote, and repaired nothing.
    let url = format!("redis://{}/", second.addr);
    let mut c = common::connect(&url).await;
    let lost = common::lost_writes(&mut c, &report.acked).await;
    assert!(lost.is_empty(), "{lost:?}");
    check_clean(&h).await;
}

/// Through a running proxy: `SLOTGUARD MIGRATE` answers with the plan, `SLOTGUARD
/// MIGRATIONS` and `/migrations` show the progress, `SLOTGUARD CANCEL` stops the move at a
/// step boundary and the same request resumes it; the proxy's clients see no error all
/// along. A user without admin access is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_move_through_a_running_proxy() {
    let options = Options {
        masters: 3,
        replicas_per_master: 1,
        node_timeout_ms: 1000,
        ..Options::default()
    };
    let h = Harness::start_with(options, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.users = vec![slotguard::config::User {
            name: "reader".into(),
            password: "r".into(),
            access: slotguard::config::Access::ReadWrite,
        }];
        c.password = Some("admin".into());
    })
    .await;
    let url = format!("redis://:admin@{}/", h.proxy.addr);
    let target = h.cluster.nodes[1].addr();
    let keys = keys_in_slots("px", 0..=999, 4000);
    let mut c = common::connect(&url).await;
    for chunk in keys.chunks(500) {
        let mut mset = redis::cmd("MSET");
        for k in chunk {
            mset.arg(k).arg("seed");
        }
        let () = mset.query_async(&mut c).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(url.clone(), 2, keys.clone(), stop.clone()));
    let counted = counters(url.clone(), keys_in_slots("pc", 0..=999, 20), stop.clone());
    let ask = |args: &[&str]| {
        let mut cmd = redis::cmd("SLOTGUARD");
        for a in args {
            cmd.arg(*a);
        }
        cmd
    };
    // Not for a user without admin access.
    let mut reader = common::connect(&format!("redis://reader:r@{}/", h.proxy.addr)).await;
    let refused = ask(&["MIGRATE", "0-999", &target])
        .query_async::<String>(&mut reader)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("admin"), "{refused}");
    let plan: String = ask(&["MIGRATE", "0-999", &target])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(plan.contains("1000 slots to move"), "{plan}");
    // Stopped at a step boundary, if it is still running, then asked again.
    if ask(&["CANCEL"]).query_async::<String>(&mut c).await.is_ok() {
        let stopped = wait_state(&mut c, "stopped").await;
        let at = stopped.lines().find(|l| l.starts_with("slots:"));
        eprintln!("REPORT | SLOTGUARD CANCEL | stopped at {at:?}");
        let again: String = ask(&["MIGRATE", "0-999", &target])
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(again.contains("slots to move"), "{again}");
    }
    let done = wait_state(&mut c, "done").await;
    assert!(done.contains("plan:"), "{done}");
    let admin = h.proxy.admin_addr.unwrap();
    let (code, body) = common::http_get(admin, "/migrations").await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["state"], "done", "{body}");
    assert_eq!(json["slots_done"], json["slots_total"], "{body}");
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    let (acked, errors) = counted.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let lost = common::lost_writes(&mut c, &report.acked).await;
    assert!(lost.is_empty(), "{lost:?}");
    for (key, n) in &acked {
        let got: i64 = redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(got, *n, "{key}");
    }
    for slot in [0, 500, 999] {
        assert_eq!(h.owner_of(slot).await, target);
    }
    check_clean(&h).await;
}

/// Waits until `SLOTGUARD MIGRATIONS` says `state:<want>`; what it says then.
async fn wait_state(c: &mut redis::aio::MultiplexedConnection, want: &str) -> String {
    let mut now = String::new();
    for _ in 0..2400 {
        now = redis::cmd("SLOTGUARD")
            .arg("MIGRATIONS")
            .query_async(c)
            .await
            .unwrap();
        if now.starts_with(&format!("state:{want}\n")) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {want}: {now}");
}
