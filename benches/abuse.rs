//! Every abusive client at once (the fairness issue's attack: 9,000 idle connections, 300
//! slowloris clients, 20 clients pipelining GETs of a 100 KB value and never reading, a
//! subscriber that never reads under a publisher's flood of 10 KB messages), against
//! slotguard in front of 3 masters and 3 replicas and against one redis-server with
//! `client-output-buffer-limit normal 64mb 16mb 10` and `pubsub 32mb 8mb 60`, in the same
//! run; then the same with bursts of new connections. A probe (`redis-benchmark`, one
//! connection) times 300 GETs before and during (the worst of three).
//!
//!     cargo bench --bench abuse            (needs `ulimit -n` of 20,000 or more)

#[path = "../tests/common/mod.rs"]
mod common;

use common::abuse::{self, Shape};
use slotguard::localcluster::{LocalCluster, Options};

const PROBES: usize = 300;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = LocalCluster::start(Options::default())
        .await
        .expect("the cluster starts");
    let proxy = common::ProxyProcess::start(&cluster, "").await;
    let redis = abuse::LimitedRedis::start(&cluster.dir).await;
    println!("| attack | target | probe p99 before | during | peak RSS | abusers disconnected |");
    println!("|---|---|---|---|---|---|");
    for (attack, shape) in [
        ("all four", Shape::FULL),
        (
            "all four, and bursts of 200 new connections",
            Shape::FULL_WITH_CHURN,
        ),
    ] {
        let sg = abuse::measure(proxy.port, proxy.child.id(), shape, PROBES, Some(&proxy)).await;
        let rs = abuse::measure(redis.port, redis.pid(), shape, PROBES, None).await;
        for (name, m) in [("slotguard", &sg), ("redis-server, limited", &rs)] {
            println!(
                "| {attack} | {name} | {:.2} ms | {:.2} ms | {} MB | {} |",
                m.before_ms,
                m.during_ms,
                m.peak_rss / (1024 * 1024),
                m.disconnected
            );
        }
        println!(
            "  slotguard's p99 during / redis-server's: {:.2}; slotguard's /metrics as the attack ended:",
            sg.during_ms / rs.during_ms
        );
        let metrics = sg.metrics.unwrap_or_default();
        for line in metrics.lines().filter(|l| {
            [
                "slotguard_clients_held",
                "slotguard_clients_over",
                "slotguard_subscribers_over",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        }) {
            println!("    {line}");
        }
    }
}
