//! `slotguard demo`: a local Redis Cluster (3 masters, 3 replicas) with the proxy in front.

use std::future::Future;

use crate::config::Config;
use crate::localcluster::{check_redis_server, LocalCluster, Options};
use crate::server;

/// Starts the cluster and the proxy, prints how to connect, and cleans up on shutdown.
pub async fn run(
    mut config: Config,
    keep_dir: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let version = check_redis_server()?;
    println!("starting a Redis Cluster: 3 masters, 3 replicas ({version})");
    let mut cluster = LocalCluster::start(Options::default())
        .await
        .map_err(|e| format!("the local cluster did not start: {e}"))?;
    if keep_dir {
        cluster.keep_dir();
    }
    config.seeds = cluster.addrs();
    if config.state_dir.is_none() {
        config.state_dir = Some(cluster.dir.join("state"));
    }
    // The slot page is the demo's picture: on, on a free port, unless asked elsewhere.
    if config.admin_listen.is_none() {
        config.admin_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let running = server::start(config).await?;
    let port = running.addr.port();
    println!();
    println!("cluster nodes:  {}", cluster.addrs().join(" "));
    println!("cluster files:  {}", cluster.dir.display());
    println!("slotguard:      {}", running.addr);
    if let Some(admin) = running.admin_addr {
        println!("slot page:      http://{admin}/");
        println!("metrics:        http://{admin}/metrics");
    }
    println!();
    println!("connect with:   redis-cli -p {port}");
    println!("benchmark:      redis-benchmark -p {port} -q");
    println!("try a failover: kill -9 a master's pid; clients of slotguard see no error");
    for node in cluster.nodes.iter().take(cluster.options.masters) {
        if let Some(pid) = node.pid() {
            println!("                master {} has pid {pid}", node.addr());
        }
    }
    println!();
    println!("Ctrl-C stops the proxy and the cluster.");
    shutdown.await;
    running.shutdown().await;
    drop(cluster);
    println!("stopped; cluster removed");
    Ok(())
}
